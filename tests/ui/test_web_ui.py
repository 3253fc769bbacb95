"""The web UI in a real browser against real nodes: screens, invite and join, requests, the door.

Three `sidedoor` nodes (Alice, Bob, Cleo) run in the background on 127.0.0.1 for the
module; each user gets a browser profile of their own (their own cookies). The tests
run in order: the first looks at empty screens, the next ones make contacts.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from conftest import User, open_ui, sd, shot, wait_until
from playwright.sync_api import expect

SCREENS = ["contacts", "me", "nearby", "requests", "invite", "transfers"]


def test_empty_screens_read_well_in_light_and_dark(browser: Any, users: dict[str, User]) -> None:
    for scheme in ("light", "dark"):
        page = open_ui(browser, users["Alice"], scheme)
        assert page.locator("#me-name").inner_text() == "Alice"
        empty = page.locator("#contacts .empty h2")
        assert empty.inner_text() == "No contacts yet: invite a colleague"
        for screen in SCREENS:
            page.goto(f"{users['Alice'].base}/#/{screen}")
            page.wait_for_selector("main h1")
            assert page.locator(f'[data-route="{screen}"][aria-current="page"]').count() == 1
            shot(page, f"{screen}-empty-{scheme}")
        page.context.close()


def test_me_shows_identity_and_renames(browser: Any, users: dict[str, User]) -> None:
    alice = users["Alice"]
    status = alice.get("/v1/status")
    page = open_ui(browser, alice)
    page.goto(f"{alice.base}/#/me")
    assert page.locator("#my-address").inner_text() == status["address"]
    assert page.locator("#my-fingerprint").inner_text() == status["fingerprint"]
    assert "127.0.0.1" in page.locator("#reach").inner_text()
    page.fill("#name-input", "")
    page.click("text=Save name")
    assert page.locator("#name-input:invalid").count() == 1  # the browser asks for a name
    page.fill("#name-input", "Alice Liddell")
    page.click("text=Save name")
    page.wait_for_selector("text=Colleagues now see you as Alice Liddell")
    expect(page.locator("#me-name")).to_have_text("Alice Liddell")
    assert alice.get("/v1/status")["name"] == "Alice Liddell"
    # A change made elsewhere (the CLI) shows up live.
    sd(alice.home, "name", "Alice")
    expect(page.locator("#me-name")).to_have_text("Alice")
    page.context.close()


def test_invite_link_then_join_makes_contacts_live(browser: Any, users: dict[str, User]) -> None:
    alice, bob = users["Alice"], users["Bob"]
    alice_page = open_ui(browser, alice)
    bob_page = open_ui(browser, bob)

    alice_page.goto(f"{alice.base}/#/invite")
    alice_page.click("text=Create invite link")
    link = alice_page.locator("#invite-link").input_value()
    assert link.startswith("sidedoor:")
    qr = alice_page.locator("#invite-qr")
    qr.wait_for()
    assert wait_until(lambda: qr.evaluate("img => img.complete && img.naturalWidth") > 100)
    shot(alice_page, "invite-link-light")
    alice_page.goto(f"{alice.base}/#/contacts")

    bob_page.goto(f"{bob.base}/#/invite")
    bob_page.fill("#join-input", "sidedoor://not-a-real-link")
    bob_page.click("button:has-text('Join')")
    error = bob_page.locator(".notice.error")
    error.wait_for()
    assert "Traceback" not in error.inner_text()
    shot(bob_page, "join-error-light")

    bob_page.fill("#join-input", link)
    bob_page.click("button:has-text('Join')")
    bob_page.wait_for_selector("text=Alice is now a contact.")

    # Each sees the other, without reloading: the event stream brought it.
    alice_page.wait_for_selector("#contacts a.person:has-text('Bob')")
    expect(alice_page.locator("#contacts .presence").first).to_contain_text("Online")
    bob_page.goto(f"{bob.base}/#/contacts")
    bob_page.wait_for_selector("#contacts a.person:has-text('Alice')")
    assert bob_page.locator("#people-nav a:has-text('Alice')").count() == 1
    shot(alice_page, "contacts-light")

    # The same link does not work twice.
    cleo_page = open_ui(browser, users["Cleo"])
    cleo_page.goto(f"{users['Cleo'].base}/#/invite")
    cleo_page.fill("#join-input", link)
    cleo_page.click("button:has-text('Join')")
    # A used link is only an address: Cleo's request waits for Alice to decide.
    cleo_page.wait_for_selector("text=Request sent. Alice needs to accept it")
    assert not users["Cleo"].get("/v1/contacts")["contacts"]
    assert [r["name"] for r in alice.get("/v1/requests")["incoming"]] == ["Cleo"]

    # The contact's page: presence in words, safety words to compare.
    alice_page.click("#contacts a.person:has-text('Bob')")
    alice_page.wait_for_selector("h1:has-text('Bob')")
    expect(alice_page.locator("#contact-presence")).to_contain_text("local network")
    alice_page.click("summary:has-text('Details and safety words')")
    words = alice_page.locator("details .words").inner_text()
    bob_card = next(c for c in alice.get("/v1/contacts")["contacts"] if c["name"] == "Bob")
    assert words == bob_card["safety_words"]
    shot(alice_page, "contact-light")
    for page in (alice_page, bob_page, cleo_page):
        page.context.close()
    dark = open_ui(browser, alice, "dark")
    shot(dark, "contacts-dark")
    dark.click("#contacts a.person:has-text('Bob')")
    dark.click("summary:has-text('Details and safety words')")
    shot(dark, "contact-dark")
    dark.context.close()


def test_a_request_is_accepted_after_comparing_words(browser: Any,
                                                     users: dict[str, User]) -> None:
    bob, cleo = users["Bob"], users["Cleo"]
    cleo_page = open_ui(browser, cleo)
    cleo_page.goto(f"{cleo.base}/#/requests")
    # Cleo's own request to Alice (the reused link) waits; nobody asked Cleo yet.
    cleo_page.wait_for_selector("#requests :text('Alice has not accepted yet')")
    assert cleo_page.locator("[data-request]").count() == 0
    sd(bob.home, "add", cleo.address, "--addr", f"127.0.0.1:{cleo.get('/v1/status')['port']}",
       "-m", "Hi Cleo, it's Bob from accounts")
    card = cleo_page.locator("[data-request]")
    card.wait_for()
    assert cleo_page.locator("#count-requests").inner_text() == "1"
    request = cleo.get("/v1/requests")["incoming"][0]
    assert card.locator(".safety").inner_text() == request["safety_words"]
    assert "Hi Cleo" in card.inner_text()
    shot(cleo_page, "requests-light")
    card.locator("button:has-text('Accept')").click()
    cleo_page.wait_for_selector("text=Bob is now a contact.")
    assert cleo_page.locator("#count-requests").is_hidden()
    assert [c["name"] for c in cleo.get("/v1/contacts")["contacts"]] == ["Bob"]
    cleo_page.goto(f"{cleo.base}/#/contacts")
    cleo_page.wait_for_selector("#contacts a.person:has-text('Bob')")
    cleo_page.context.close()


def test_block_from_the_contact_page(browser: Any, users: dict[str, User]) -> None:
    cleo = users["Cleo"]
    page = open_ui(browser, cleo)
    page.click("#contacts a.person:has-text('Bob')")
    page.click("summary:has-text('Details and safety words')")
    page.click("button:has-text('Block')")
    page.wait_for_selector("text=Bob is blocked.")
    page.wait_for_selector("#contact-presence:has-text('Blocked')")
    assert cleo.get("/v1/contacts")["contacts"][0]["blocked"] is True
    page.click("button:has-text('Unblock')")
    page.wait_for_selector("text=Bob is unblocked.")
    page.context.close()


# ------------------------------------------------------------------- the door

def _status(url: str, headers: dict[str, str] | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {}, data=data)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_browser_without_a_login_gets_nothing(browser: Any, users: dict[str, User]) -> None:
    alice = users["Alice"]
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(alice.base + "/")
    assert response is not None and response.status == 401
    assert "Run sidedoor" in page.inner_text("body")
    shot(page, "signed-out-light")
    assert page.goto(alice.base + "/v1/contacts").status == 401
    context.close()


def test_a_login_link_works_once_in_the_browser(browser: Any, users: dict[str, User]) -> None:
    alice = users["Alice"]
    url = alice.login_url()
    first = browser.new_context()
    page = first.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-ready]")
    second = browser.new_context()
    again = second.new_page()
    response = again.goto(url)
    assert response is not None and response.status == 403
    assert "already used" in again.inner_text("body")
    first.close()
    second.close()


def test_another_local_page_cannot_act_for_the_user(browser: Any,
                                                    users: dict[str, User]) -> None:
    """Bob's UI (another origin on this machine) tries to rename Alice through her browser."""
    alice, bob = users["Alice"], users["Bob"]
    context = browser.new_context()
    alice_page = context.new_page()
    alice_page.goto(alice.login_url())  # the browser holds Alice's cookie
    alice_page.wait_for_selector("body[data-ready]")
    evil = context.new_page()
    evil.goto(bob.login_url())
    evil.wait_for_selector("body[data-ready]")
    outcome = evil.evaluate("""async (target) => {
        const tries = [];
        for (const mode of ["no-cors", "cors"]) {
            try {
                const r = await fetch(target + "/v1/name", {method: "POST", mode,
                    credentials: "include", headers: {"Content-Type": "text/plain"},
                    body: JSON.stringify({name: "Mallory"})});
                tries.push(mode + ":" + r.status);
            } catch (e) { tries.push(mode + ":blocked"); }
        }
        return tries;
    }""", alice.base)
    assert outcome, outcome
    assert alice.get("/v1/status")["name"] == "Alice"
    context.close()


def test_foreign_host_and_origin_are_refused_over_http(users: dict[str, User]) -> None:
    alice = users["Alice"]
    assert _status(alice.base + "/", {"Host": "evil.example"}) == 403
    assert _status(alice.base + "/v1/status", {"Host": f"evil.example:{alice.port}"}) == 403
    token = json.loads((alice.home / "control.json").read_text())["token"]
    assert _status(alice.base + "/v1/status", {"Authorization": f"Bearer {token}"}) == 200
    assert _status(alice.base + "/v1/status", {"Authorization": f"Bearer {token}",
                                               "Origin": "http://evil.example"}) == 403
    assert _status(alice.base + "/v1/name", {"Origin": alice.base,
                                             "Content-Type": "application/json"},
                   b'{"name": "Mallory"}') == 401
    assert wait_until(lambda: alice.get("/v1/status")["name"] == "Alice")


def test_readable_at_125_percent_zoom_and_on_a_narrow_window(browser: Any,
                                                             users: dict[str, User]) -> None:
    alice = users["Alice"]
    # 125% zoom on a 1280-pixel-wide window is a 1024-CSS-pixel viewport at 1.25 scale.
    for name, viewport, scale in (("zoom125", {"width": 1024, "height": 700}, 1.25),
                                  ("narrow", {"width": 600, "height": 900}, 1.0)):
        context = browser.new_context(viewport=viewport, device_scale_factor=scale)
        page = context.new_page()
        page.goto(alice.login_url())
        page.wait_for_selector("body[data-ready]")
        for screen in ("contacts", "me", "invite", "requests"):
            page.goto(f"{alice.base}/#/{screen}")
            page.wait_for_selector("main h1")
            overflow = page.evaluate(
                "() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
            assert overflow <= 0, (name, screen, overflow)
        shot(page, f"requests-{name}-light")
        context.close()


def test_everything_is_reachable_with_the_keyboard(browser: Any, users: dict[str, User]) -> None:
    page = open_ui(browser, users["Alice"])
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    reached = []
    for _ in range(12):
        page.keyboard.press("Tab")
        reached.append(page.evaluate("() => document.activeElement.textContent.trim()"))
    assert any(text.startswith("Invite or join") for text in reached), reached
    while not page.evaluate("() => document.activeElement.textContent.trim()").startswith(
            "Invite or join"):
        page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    page.wait_for_selector("h1:has-text('Invite or join')")
    page.focus("#join-input")
    page.keyboard.type("7-not-a-code")
    page.keyboard.press("Enter")  # submits the form
    page.locator(".notice.error").wait_for()
    page.context.close()

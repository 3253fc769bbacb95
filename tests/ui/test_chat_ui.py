"""Chat in the browser: two contacts talk, each sees the other's messages live; a room;
a message that arrives while the tab is in the background is read only once seen."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import User, open_ui, sd, shot, start_user, stop_user, wait_until
from playwright.sync_api import expect


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[User, User]]:
    base = tmp_path_factory.mktemp("chat-ui")
    with ThreadPoolExecutor(2) as pool:
        alice, bob = pool.map(lambda name: start_user(base, name), ["Alice", "Bob"])
    try:
        link = alice.api("invite", "--link")["link"]
        sd(bob.home, "join", link)
        yield alice, bob
    finally:
        stop_user(alice)
        stop_user(bob)


def test_two_contacts_chat_live(browser: Any, pair: tuple[User, User]) -> None:
    alice, bob = pair
    alice_page = open_ui(browser, alice)
    bob_page = open_ui(browser, bob)
    alice_page.click("#people-nav a:has-text('Bob')")
    alice_page.wait_for_selector("#composer")
    bob_page.goto(f"{bob.base}/#/contacts")

    alice_page.fill("#composer", "Hi Bob! Lunch at 12?")
    alice_page.press("#composer", "Enter")
    mine = alice_page.locator(".bubble.mine").last
    expect(mine).to_contain_text("Hi Bob! Lunch at 12?")
    # Bob is not looking at the conversation: an unread count, live.
    expect(bob_page.locator("#people-nav a:has-text('Alice') .count")).to_have_text("1")
    expect(mine).to_contain_text("Delivered")
    bob_page.click("#people-nav a:has-text('Alice')")
    expect(bob_page.locator(".bubble").last).to_contain_text("Hi Bob! Lunch at 12?")
    expect(bob_page.locator("#people-nav a:has-text('Alice') .count")).to_have_count(0)
    expect(mine).to_contain_text("Read")

    bob_page.fill("#composer", "Sure, see you <b>there</b>")
    bob_page.click("button:has-text('Send')")
    reply = alice_page.locator(".bubble:not(.mine)").last
    expect(reply).to_contain_text("Sure, see you <b>there</b>")
    assert alice_page.locator(".bubble b").count() == 0  # text stays text
    shot(alice_page, "chat-light")
    alice_page.context.close()
    dark = open_ui(browser, bob, "dark")
    dark.click("#people-nav a:has-text('Alice')")
    dark.wait_for_selector(".bubble")
    shot(dark, "chat-dark")
    dark.context.close()
    bob_page.context.close()


def test_a_room_and_search(browser: Any, pair: tuple[User, User]) -> None:
    alice, bob = pair
    page = open_ui(browser, alice)
    page.click("text=+ New room")
    page.fill("#room-name", "Falcon")
    page.check("label.pick:has-text('Bob') input")
    page.click("button:has-text('Create room')")
    page.wait_for_selector("h1:has-text('Falcon')")
    page.fill("#composer", "Kick-off on Monday")
    page.press("#composer", "Enter")
    expect(page.locator(".bubble.mine").last).to_contain_text("Kick-off on Monday")
    bob_page = open_ui(browser, bob)
    bob_page.click("#people-nav a:has-text('Falcon')")
    expect(bob_page.locator(".bubble").last).to_contain_text("Kick-off on Monday")
    expect(bob_page.locator(".bubble .sender").last).to_have_text("Alice")
    shot(page, "room-light")
    page.click("text=Search messages")
    page.fill("#search-input", "monday")
    page.press("#search-input", "Enter")
    expect(page.locator("#search-results")).to_contain_text("Kick-off on Monday")
    shot(page, "search-light")
    page.context.close()
    bob_page.context.close()


HIDE_TAB = """(hidden) => {
  Object.defineProperty(document, "visibilityState", {value: hidden ? "hidden" : "visible",
                                                      configurable: true});
  document.dispatchEvent(new Event("visibilitychange"));
}"""


def test_a_message_in_a_background_tab_is_read_when_the_tab_is_back(
        browser: Any, pair: tuple[User, User]) -> None:
    alice, bob = pair
    bob_page = open_ui(browser, bob)
    bob_page.click("#people-nav a:has-text('Alice')")
    bob_page.wait_for_selector("#composer")
    bob_page.evaluate(HIDE_TAB, True)
    alice.api("say", "Bob", "are you there?")
    latest = bob_page.locator(".bubble").last
    expect(latest).to_contain_text("are you there?")  # shown live...
    badge = bob_page.locator("#people-nav a:has-text('Alice') .count")
    expect(badge).to_have_text("1")  # ...but nobody has seen it yet
    bob_page.evaluate(HIDE_TAB, False)
    expect(badge).to_have_count(0)
    def states() -> list[str]:
        return [m["state"] for m in alice.api("history", "Bob") if m["text"] == "are you there?"]
    assert wait_until(lambda: states() == ["read"]), states()
    bob_page.context.close()


def test_away_and_typing_show_live(browser: Any, pair: tuple[User, User]) -> None:
    alice, bob = pair
    alice_page = open_ui(browser, alice)
    bob_page = open_ui(browser, bob)
    bob_page.click("#people-nav a:has-text('Alice')")
    presence = bob_page.locator("#contact-presence")
    expect(presence).to_contain_text("Online")

    alice_page.goto(f"{alice.base}/#/me")
    alice_page.click("button:has-text('Set me as away')")
    expect(alice_page.locator("#my-presence")).to_contain_text("see you as away")
    expect(alice_page.locator("#live-state")).to_have_text("Away")
    expect(presence).to_contain_text("Away")  # live on Bob's page
    shot(alice_page, "me-away-light")

    alice_page.click("#people-nav a:has-text('Bob')")
    alice_page.wait_for_selector("#composer")
    bob_page.locator("#composer").press_sequentially("on my w", delay=20)
    expect(alice_page.locator("#typing")).to_have_text("Bob is typing…")
    bob_page.press("#composer", "Enter")
    expect(alice_page.locator(".bubble").last).to_contain_text("on my w")
    expect(alice_page.locator("#typing")).to_have_text("")  # the message came

    alice_page.goto(f"{alice.base}/#/me")
    alice_page.click("button:has-text(\"I'm back\")")
    expect(presence).to_contain_text("Online")
    alice_page.context.close()
    bob_page.context.close()

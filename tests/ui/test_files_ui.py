"""Files in the browser: Alice drops a file on the conversation, Bob accepts it in his UI,
and it arrives byte-identical; a folder picked with the file picker goes too.

Needs the node's file routes (/v1/transfers): skipped, saying so, on a build without them.
"""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import User, open_ui, sd, shot, start_user, stop_user
from playwright.sync_api import expect

DROP_SIZE = 1_500_000


def pattern(n: int) -> bytes:
    """The bytes the page makes for the dropped file (the same formula in JS)."""
    return bytes((i * 7 + i // 251) % 256 for i in range(n))


def transfers_of(user: User) -> list[dict[str, Any]]:
    token = json.loads((user.home / "control.json").read_text())["token"]
    request = urllib.request.Request(user.base + "/v1/transfers",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        found = json.loads(resp.read())["transfers"]
    assert isinstance(found, list)
    return found


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[User, User, Path]]:
    base = tmp_path_factory.mktemp("files-ui")
    incoming = base / "incoming"
    incoming.mkdir()
    with ThreadPoolExecutor(2) as pool:
        alice, bob = pool.map(lambda name: start_user(base, name), ["Alice", "Bob"])
    try:
        sd(bob.home, "config", "set", "downloads", str(incoming))
        link = alice.api("invite", "--link")["link"]
        sd(bob.home, "join", link)
        yield alice, bob, incoming
    finally:
        stop_user(alice)
        stop_user(bob)


def test_a_dropped_file_arrives_byte_identical(browser: Any,
                                               pair: tuple[User, User, Path]) -> None:
    alice, bob, incoming = pair
    alice_page = open_ui(browser, alice)
    bob_page = open_ui(browser, bob)
    bob_page.goto(f"{bob.base}/#/transfers")
    bob_page.wait_for_selector("text=No transfers yet")

    alice_page.click("#people-nav a:has-text('Bob')")
    alice_page.wait_for_selector(".filebar")
    alice_page.evaluate("""(size) => {
        const bytes = new Uint8Array(size);
        for (let i = 0; i < size; i++) bytes[i] = (i * 7 + Math.floor(i / 251)) % 256;
        const data = new DataTransfer();
        data.items.add(new File([bytes], "quarterly report.bin"));
        const zone = document.querySelector(".convo");
        zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true,
                                                      cancelable: true}));
        zone.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true,
                                                  cancelable: true}));
    }""", DROP_SIZE)
    alice_page.wait_for_selector(".filebar [data-transfer]")

    # Bob's transfers screen shows the offer live, with a count in the sidebar.
    offer = bob_page.locator("[data-transfer][data-status='offered']")
    expect(offer).to_contain_text("quarterly report.bin")
    expect(bob_page.locator("#count-transfers")).to_have_text("1")
    shot(bob_page, "transfers-offer-light")
    offer.locator("button:has-text('Accept')").click()
    done = bob_page.locator("[data-transfer][data-status='done']")
    try:
        expect(done).to_contain_text("Received from Alice", timeout=60_000)
    except AssertionError:
        raise AssertionError(f"not done: {transfers_of(bob)} / {transfers_of(alice)}") from None
    try:
        expect(alice_page.locator(".filebar [data-status='done']")).to_contain_text(
            "Sent to Bob", timeout=30_000)
    except AssertionError:
        raise AssertionError(f"sender: {transfers_of(alice)}; page: "
                             f"{alice_page.inner_text('.filebar')}") from None
    shot(bob_page, "transfers-done-light")
    shot(alice_page, "conversation-files-light")

    received = [p for p in incoming.rglob("quarterly report.bin") if p.is_file()]
    assert len(received) == 1, list(incoming.rglob("*"))
    assert hashlib.sha256(received[0].read_bytes()).digest() == \
        hashlib.sha256(pattern(DROP_SIZE)).digest()
    assert [t["status"] for t in transfers_of(bob)] == ["done"]
    alice_page.context.close()
    bob_page.context.close()


def test_a_folder_from_the_picker_and_a_decline(browser: Any, pair: tuple[User, User, Path],
                                                 tmp_path: Path) -> None:
    alice, bob, incoming = pair
    folder = tmp_path / "minutes"
    (folder / "2026").mkdir(parents=True)
    (folder / "2026" / "jan.txt").write_text("January minutes\n")
    (folder / "feb.txt").write_text("February minutes\n")
    alice_page = open_ui(browser, alice)
    alice_page.click("#people-nav a:has-text('Bob')")
    alice_page.set_input_files("#folder-input", str(folder))
    bob_page = open_ui(browser, bob)
    bob_page.goto(f"{bob.base}/#/transfers")
    offer = bob_page.locator("[data-transfer][data-status='offered']")
    expect(offer).to_contain_text("minutes")
    offer.locator("button:has-text('Accept')").click()
    folder_done = bob_page.locator("[data-transfer][data-status='done']:has-text('minutes')")
    try:
        expect(folder_done).to_have_count(1, timeout=60_000)
    except AssertionError:
        raise AssertionError(f"not done: {transfers_of(bob)}") from None
    got = {p.relative_to(p.parents[2]).as_posix() if p.parent.name == "2026" else
           p.relative_to(p.parents[1]).as_posix(): p.read_text()
           for p in incoming.rglob("*.txt") if "minutes" in p.parts}
    assert got == {"minutes/2026/jan.txt": "January minutes\n",
                   "minutes/feb.txt": "February minutes\n"}

    # A second offer, declined in the browser: nothing more arrives.
    alice_page.set_input_files("#file-input", str(folder / "feb.txt"))
    offer = bob_page.locator("[data-transfer][data-status='offered']")
    expect(offer).to_contain_text("feb.txt")
    offer.locator("button:has-text('Decline')").click()
    expect(bob_page.locator("[data-transfer][data-status='declined']")).to_have_count(1)
    expect(alice_page.locator(".filebar [data-status='declined']")).to_contain_text(
        "Bob declined it")
    shot(bob_page, "transfers-light")
    alice_page.context.close()
    bob_page.context.close()

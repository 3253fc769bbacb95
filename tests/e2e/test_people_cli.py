"""People on the command line: add, requests, contacts, contact ..., invite --link, join.

Three background nodes (Ann, Bob, Cleo) run for the whole module, started in parallel
by real ``sidedoor up --detach`` processes on 127.0.0.1 without discovery. The
commands then go through the same click commands in process (`sd_in`), which talk to
the nodes over their control APIs; a few are real subprocesses (`sd`), to show the
exit code and the one-line error a user sees.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from test_cli import (
    Detached,
    as_json,
    detached_nodes,
    failed,
    ok,
    sd,
    sd_in,
)

from sidedoor.cards import card_from_text, card_to_text
from sidedoor.cli.common import _api, _run
from sidedoor.cli.main import cli
from sidedoor.errors import ControlAPIError
from sidedoor.identity import PublicIdentity, safety_words

NAMES = ("Ann", "Bob", "Cleo")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def words_between(x: Detached, y: Detached) -> str:
    return safety_words(PublicIdentity.from_address(x.address),
                        PublicIdentity.from_address(y.address))


def contacts_of(node: Detached) -> dict[str, dict[str, Any]]:
    """The node's contacts by address, from `contacts --json`."""
    return {c["address"]: c for c in as_json(sd_in(node.home, "contacts", "--json"))}


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Detached]]:
    base = tmp_path_factory.mktemp("people")
    homes = {name: base / name.lower() for name in NAMES}
    for name, home in homes.items():
        ok(sd_in(home, "name", name))
    with detached_nodes(homes) as (nodes, started):
        for name, result in started.items():
            assert result.returncode == 0 and "Node started" in result.stdout, result
            status = as_json(sd_in(homes[name], "status", "--json"))
            assert status["name"] == name and status["discovery"] is False
            assert status["listening"] == [f"127.0.0.1:{status['port']}"]
        yield nodes


# ------------------------------------------------------- request and answer

def test_request_accept_and_manage_a_contact(people: dict[str, Detached]) -> None:
    ann, bob = people["Ann"], people["Bob"]
    text = ok(sd_in(bob.home, "add", ann.address, "--addr", ann.addr, "-m", "hi")).stdout
    assert "Request sent. Ann will see it in `sidedoor requests`." in text

    waiting = ok(sd_in(ann.home, "requests")).stdout
    assert "#1 Bob (" in waiting and "via nearby" in waiting
    assert "“hi”" in waiting
    assert f"safety words: {words_between(ann, bob)}" in waiting
    data = as_json(sd_in(ann.home, "requests", "--json"))
    (request,) = data["incoming"]
    assert request["id"] == 1 and request["address"] == bob.address
    assert request["message"] == "hi" and request["safety_words"] == words_between(ann, bob)
    assert data["outgoing"] == []
    assert "sent to Ann" in ok(sd_in(bob.home, "requests")).stdout

    accepted = ok(sd_in(ann.home, "requests", "accept", "1")).stdout
    assert "Bob is now a contact." in accepted
    assert "could not be reached" not in accepted  # Bob was told at once
    assert as_json(sd_in(ann.home, "requests", "--json")) == {"incoming": [], "outgoing": []}
    failed(sd_in(ann.home, "requests", "accept", "1"), "no waiting request #1")

    of_ann, of_bob = contacts_of(ann), contacts_of(bob)
    assert of_ann[bob.address]["petname"] == "Bob" and of_bob[ann.address]["petname"] == "Ann"
    for mine, theirs in ((of_ann[bob.address], bob), (of_bob[ann.address], ann)):
        assert mine["verified"] is False and mine["blocked"] is False
        assert mine["source"] == "request" and mine["addrs"] == [theirs.addr]
        assert mine["safety_words"] == words_between(ann, bob)
        assert mine["fingerprint"] == PublicIdentity.from_address(theirs.address).fingerprint()
    assert bob.address not in contacts_of(people["Cleo"])

    assert "Renamed to Bobby" in ok(sd_in(ann.home, "contact", "rename", "bob", "Bobby")).stdout
    failed(sd_in(ann.home, "contact", "rename", "Nobody", "X"), "no contact matches 'Nobody'")
    verify = ok(sd_in(ann.home, "contact", "verify", "Bobby", "--yes")).stdout
    assert f"Safety words with Bobby: {words_between(ann, bob)}" in verify
    assert "Bobby is verified." in verify
    info = contacts_of(ann)[bob.address]
    assert info["petname"] == "Bobby" and info["verified"] is True
    # Without --yes the question is asked; a "no" verifies nothing.
    result = CliRunner().invoke(cli, ["--home", str(bob.home), "contact", "verify", "Ann"],
                                input="n\n", env={"SIDEDOOR_HOME": None})
    assert result.exit_code == 1 and "Do they see the same words?" in result.stdout
    assert f"Safety words with Ann: {words_between(ann, bob)}" in result.stdout
    assert "the words must match" in result.stderr
    assert contacts_of(bob)[ann.address]["verified"] is False

    # Bob reaches Ann as a contact...
    assert as_json(sd_in(bob.home, "ping", ann.address, "--addr", ann.addr, "-c", "1",
                         "--json"))["contact"] is True
    # ...until she blocks him: the next session is refused at the handshake.
    assert "Blocked" in ok(sd_in(ann.home, "contact", "block", bob.address[:12])).stdout
    assert contacts_of(ann)[bob.address]["blocked"] is True
    assert "(blocked)" in ok(sd_in(ann.home, "contacts")).stdout
    failed(sd(bob.home, "ping", ann.address, "--addr", ann.addr, "-c", "1", "--timeout", "5"),
           "refused the connection", "blocked")
    ok(sd_in(ann.home, "contact", "unblock", "Bobby"))
    assert as_json(sd_in(bob.home, "ping", ann.address, "--addr", ann.addr, "-c", "1",
                         "--json"))["contact"] is True


def test_bad_input_to_add_and_requests(people: dict[str, Detached]) -> None:
    ann, cleo = people["Ann"], people["Cleo"]
    a = ann.address
    typo = a[:20] + ("x" if a[20] != "x" else "y") + a[21:]
    failed(sd_in(cleo.home, "add", typo, "--addr", ann.addr), "this address has a typo")
    failed(sd_in(cleo.home, "add", a[:-2], "--addr", ann.addr), "this address has a typo")
    failed(sd_in(cleo.home, "add", "Ann"), "nobody is visible nearby")
    failed(sd_in(cleo.home, "add", cleo.address, "--addr", cleo.addr), "that is you")
    failed(sd_in(ann.home, "requests", "accept", "99"), "no waiting request #99")
    failed(sd_in(ann.home, "requests", "decline", "99"), "no request #99")
    failed(sd_in(ann.home, "contact", "block", "zzz"), "no contact matches")
    assert sd_in(ann.home, "requests", "accept", "one").returncode == 2  # usage error
    assert as_json(sd_in(ann.home, "requests", "--json"))["incoming"] == []


# ---------------------------------------------------------- links and QR codes

def test_invite_link_and_join(people: dict[str, Detached], tmp_path: Path) -> None:
    ann, cleo = people["Ann"], people["Cleo"]
    data = as_json(sd_in(ann.home, "invite", "--link", "--json"))
    link = data["link"]
    assert link.startswith("sidedoor://add/") and "?t=" in link and data["png"] is None

    joined = ok(sd_in(cleo.home, "join", link)).stdout
    assert "Ann and you are now contacts." in joined
    assert contacts_of(ann)[cleo.address]["source"] == "link"
    assert contacts_of(cleo)[ann.address]["petname"] == "Ann"
    assert as_json(sd_in(ann.home, "requests", "--json"))["incoming"] == []

    png = tmp_path / "invite.png"
    text = ok(sd_in(ann.home, "invite", "--png", str(png))).stdout
    assert "sidedoor://add/" in text and f"QR code saved to {png}" in text
    assert png.read_bytes()[:8] == PNG_MAGIC


def test_join_with_a_damaged_link(people: dict[str, Detached]) -> None:
    ann, bob = people["Ann"], people["Bob"]
    link = as_json(sd_in(ann.home, "invite", "--link", "--json"))["link"]
    parts = urllib.parse.urlsplit(link)
    card_text = parts.path.lstrip("/")
    middle = len(card_text) // 2
    lost_char = link.replace(card_text, card_text[:middle] + card_text[middle + 1 :])
    failed(sd(bob.home, "join", lost_char), "this link is damaged")

    edited = card_to_text(card_from_text(card_text).replace(b"Ann", b"Eve"))
    failed(sd_in(bob.home, "join", link.replace(card_text, edited)), "forged")
    failed(sd_in(bob.home, "join", link[: len(link) // 2]), "damaged")
    failed(sd_in(bob.home, "join", link.replace("?t=", "?t=x")), "token is damaged")
    failed(sd_in(bob.home, "join", link.replace("sidedoor://add/", "sidedoor://ad/")),
           "not a sidedoor link")
    # Nothing reached Ann, and nothing was sent or stored.
    assert as_json(sd_in(ann.home, "requests", "--json"))["incoming"] == []
    assert as_json(sd_in(bob.home, "requests", "--json"))["outgoing"] == []


# ------------------------------------------------------------------ verify

def test_verify_shows_the_words_of_the_contact_the_node_resolves(
        people: dict[str, Detached]) -> None:
    """By fingerprint or the start of an address too: the node resolves those, so the
    words must be shown for them before anything is marked verified."""
    bob, cleo = people["Bob"], people["Cleo"]
    ok(sd_in(cleo.home, "add", bob.address, "--addr", bob.addr))
    (request,) = [r for r in as_json(sd_in(bob.home, "requests", "--json"))["incoming"]
                  if r["address"] == cleo.address]
    ok(sd_in(bob.home, "requests", "accept", str(request["id"])))
    ok(sd_in(bob.home, "contact", "rename", cleo.address, "R&D / Cleo"))
    fingerprint = PublicIdentity.from_address(cleo.address).fingerprint()
    words = words_between(bob, cleo)

    # The node's answer for one contact is the list's entry for it.
    listed = contacts_of(bob)[cleo.address]
    for who in (fingerprint, cleo.address[:10], "r&d / cleo", "R&D"):
        one = _run(_api(bob.home, "GET", f"/v1/contacts/{quote(who, safe='')}"))
        assert {**one, "online": None, "last_seen": None} == {
            **listed, "online": None, "last_seen": None}, who
    with pytest.raises(ControlAPIError, match="no contact matches 'nobody'") as caught:
        _run(_api(bob.home, "GET", "/v1/contacts/nobody"))
    assert caught.value.status == 400
    failed(sd_in(bob.home, "contact", "verify", "nobody", "--yes"), "no contact matches")

    # By fingerprint, answering no: the words were shown, nothing is verified.
    result = CliRunner().invoke(cli, ["--home", str(bob.home), "contact", "verify", fingerprint],
                                input="n\n", env={"SIDEDOOR_HOME": None})
    assert result.exit_code == 1, result.output
    shown = result.stdout
    assert f"Safety words with R&D / Cleo: {words}" in shown
    assert fingerprint in shown and cleo.address in shown and "Contact      R&D / Cleo" in shown
    assert shown.index(words) < shown.index("Do they see the same words?")
    assert contacts_of(bob)[cleo.address]["verified"] is False

    # By the start of the address, with --yes: shown all the same, then verified.
    text = ok(sd_in(bob.home, "contact", "verify", cleo.address[:10], "--yes")).stdout
    assert f"Safety words with R&D / Cleo: {words}" in text and fingerprint in text
    assert "R&D / Cleo is verified." in text
    assert contacts_of(bob)[cleo.address]["verified"] is True

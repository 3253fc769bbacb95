"""File names from the wire: what is refused, what is kept, and that nothing accepted
can leave the folder it is joined to."""

from __future__ import annotations

import posixpath
import re
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidedoor.errors import UnsafeFileName
from sidedoor.proto.file_names import (
    MAX_DEPTH,
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    PathChecker,
    check_name,
    check_path,
    numbered,
)

HOSTILE = [
    ("../../.ssh/authorized_keys", "outside the folder"),
    ("/etc/passwd", "absolute"),
    ("C:\\x", "drive letter"),
    ("c:x", "drive letter"),
    ("a\\..\\b", "'\\\\'"),
    ("con", "device name"),
    ("NUL.txt", "device name"),
    ("docs/com1", "device name"),
    ("lpt9.log", "device name"),
    ("CONOUT$", "device name"),
    ("a\x00b", "control character"),
    ("line\nbreak", "control character"),
    ("tab\there", "control character"),
    ("bidi\u202egpj.exe", "control character"),
    ("", "empty"),
    ("a//b", "empty"),
    ("a/", "empty"),
    ("./a", "outside the folder"),
    ("a/./b", "outside the folder"),
    ("a/..", "outside the folder"),
    ("trailing.", "ends with a dot"),
    ("trailing ", "ends with a dot or a space"),
    ("x" * (MAX_NAME_BYTES + 1), "longer than"),
    ("/".join(["abcdefgh"] * 120), "longer than"),
    ("/".join(["a"] * 40), "deep"),
    ("what?", "'?'"),
    ("ab:c", "':'"),
    ("e\u0301", "normal form"),
]


@pytest.mark.parametrize(("path", "why"), HOSTILE)
def test_hostile_paths_are_refused_with_the_reason(path: str, why: str) -> None:
    with pytest.raises(UnsafeFileName, match=re.escape(why)):
        check_path(path)


@pytest.mark.parametrize("path", [
    "report.pdf", "photos/2024/IMG 0001.jpg", ".hidden", "con-tract.txt", "nul1.txt",
    "résumé.pdf", "日本語/ファイル.txt", "a" * MAX_NAME_BYTES, "comma, and (brackets)",
])
def test_ordinary_names_are_kept(path: str) -> None:
    assert check_path(path) == tuple(path.split("/"))


@given(st.text(max_size=300))
def test_an_accepted_path_stays_inside_its_folder(text: str) -> None:
    try:
        parts = check_path(text)
    except UnsafeFileName:
        return
    joined = posixpath.normpath(posixpath.join("/dest", *parts))
    assert joined.startswith("/dest/")
    assert joined == "/dest/" + text  # already normal: one spelling per name
    assert len(text.encode()) <= MAX_PATH_BYTES
    for part in parts:
        assert part not in ("", ".", "..")
        assert "\x00" not in part and "\n" not in part and "\\" not in part
        assert unicodedata.normalize("NFC", part) == part


@given(st.lists(st.sampled_from(["..", ".", "", "a", "/", "\\", "C:", "\x00", "con"]),
                min_size=1, max_size=8))
def test_paths_built_from_dangerous_pieces(pieces: list[str]) -> None:
    text = "/".join(pieces)
    try:
        parts = check_path(text)
    except UnsafeFileName:
        return
    assert all(p == "a" for p in parts)


def judged(check: object, path: str) -> tuple[str, ...] | str:
    """What a checker says of ``path``: its parts, or the error's message."""
    try:
        result: tuple[str, ...] = check(path)  # type: ignore[operator]
    except UnsafeFileName as exc:
        return str(exc)
    return result


@pytest.mark.parametrize(("path", "why"), HOSTILE)
def test_the_path_checker_refuses_what_check_path_refuses_in_a_known_folder(
        path: str, why: str) -> None:
    check = PathChecker()
    folder = path.rpartition("/")[0]
    for known in ("a/ok.txt", "docs/ok.txt", f"{folder}/ok.txt", "/".join(["a"] * 31) + "/x"):
        judged(check, known)  # the folders it may reuse
    with pytest.raises(UnsafeFileName, match=re.escape(why)):
        check(path)
    for deeper in (f"{path}/x", "/".join(["a"] * MAX_DEPTH) + "/x", "a/" + "x" * 1100):
        assert judged(check, deeper) == judged(check_path, deeper)


@given(st.lists(st.one_of(
    st.sampled_from(["a/b/c.txt", "a/b/d", "a/b", "a", "a/../b", "a/b/con", "a/b/", "/a/b",
                     "x/" * 31 + "y", "x/" * 32 + "y", "a/" + "b" * 300, "a/b/e\u0301"]),
    st.lists(st.sampled_from(["a", "b", "..", "", "con", "é", "x" * 200, "\n"]),
             min_size=1, max_size=6).map("/".join)), max_size=20))
def test_the_path_checker_agrees_with_check_path(paths: list[str]) -> None:
    check = PathChecker()
    for path in paths:
        assert judged(check, path) == judged(check_path, path)


@pytest.mark.parametrize(("name", "n", "expected"), [
    ("report.pdf", 1, "report (1).pdf"),
    ("report.pdf", 12, "report (12).pdf"),
    ("archive.tar.gz", 2, "archive (2).tar.gz"),
    ("README", 1, "README (1)"),
    (".bashrc", 1, ".bashrc (1)"),
    ("my.report.v2.pdf", 1, "my.report.v2 (1).pdf"),
])
def test_numbered_alternatives(name: str, n: int, expected: str) -> None:
    assert numbered(name, n) == expected
    check_name(numbered(name, n))


def test_a_numbered_long_name_stays_within_the_limit() -> None:
    name = "é" * 120 + ".txt"
    alt = numbered(name, 3)
    assert alt.endswith(" (3).txt") and len(alt.encode()) <= MAX_NAME_BYTES
    assert numbered("photos", 1, is_dir=True) == "photos (1)"

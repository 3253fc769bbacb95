"""File names from the wire, judged before anything touches a disk (pure, no I/O).

A transfer's manifest names every file by a relative path with ``/`` between its
parts. The receiver writes only below the folder its user chose, so a name is
accepted only if it cannot point anywhere else and means the same thing on every
system a colleague may run: no absolute paths, no ``..`` or ``.``, no drive letters
or backslashes (Windows separators), no device names (``con``, ``nul.txt``,
``COM1``), no control characters (NUL, newline, ...), nothing over the length
limits, and no trailing dots or spaces (Windows drops them, so ``con.`` is ``con``).
Names must already be in Unicode NFC, so one name has one spelling.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Final

from sidedoor.errors import UnsafeFileName

MAX_NAME_BYTES: Final = 255  # one part, UTF-8: the limit of ext4, NTFS and APFS alike
MAX_PATH_BYTES: Final = 1024  # the whole relative path: leaves room for the destination
MAX_DEPTH: Final = 32

# Characters Windows refuses in names (besides control characters and the separators).
_WINDOWS_RESERVED_CHARS: Final = frozenset('<>:"|?*\\')
# Device names are reserved with any extension too ("nul.txt"), in any case.
_DEVICE_NAME: Final = re.compile(
    r"^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$|clock\$)(\..*)?$",
    re.IGNORECASE,
)


def _show(text: str) -> str:
    """A name as it can be put in an error message: short, control characters escaped."""
    shown = text if len(text) <= 60 else text[:57] + "..."
    return repr(shown)


_PLAIN: Final = re.compile(r"[A-Za-z0-9_ .,()+=@#%&'!~\[\]{}-]+")


def check_name(name: str) -> str:
    """One part of a path (a file or folder name): returned if safe, else `UnsafeFileName`."""
    if _PLAIN.fullmatch(name) and name not in (".", "..") and len(name) <= MAX_NAME_BYTES \
            and name[-1] not in ". " and not _DEVICE_NAME.match(name):
        return name  # the common case, decided without looking at each character
    if not name:
        raise UnsafeFileName("an empty file name")
    if name in (".", ".."):
        raise UnsafeFileName(f"the name {name!r} points outside the folder")
    for ch in name:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") or ch == "\x7f":
            raise UnsafeFileName(f"the name {_show(name)} contains a control character")
        if ch == "/" or ch in _WINDOWS_RESERVED_CHARS:
            raise UnsafeFileName(f"the name {_show(name)} contains {ch!r}, which is not "
                                 "allowed in file names on every system")
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        raise UnsafeFileName(f"the name {_show(name)} is longer than {MAX_NAME_BYTES} bytes")
    if name[-1] in ". ":
        raise UnsafeFileName(f"the name {_show(name)} ends with a dot or a space")
    if _DEVICE_NAME.match(name):
        raise UnsafeFileName(f"the name {_show(name)} is a device name on Windows")
    if unicodedata.normalize("NFC", name) != name:
        raise UnsafeFileName(f"the name {_show(name)} is not in Unicode normal form (NFC)")
    return name


def check_path(path: str) -> tuple[str, ...]:
    """A relative path from the wire: its parts if it is safe, else `UnsafeFileName`."""
    if not isinstance(path, str) or not path:
        raise UnsafeFileName("an empty path")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafeFileName(f"the path {_show(path)} is longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise UnsafeFileName(f"the path {_show(path)} is absolute")
    if len(path) >= 2 and path[1] == ":" and path[0].isascii() and path[0].isalpha():
        raise UnsafeFileName(f"the path {_show(path)} starts with a drive letter")
    parts = tuple(path.split("/"))
    if len(parts) > MAX_DEPTH:
        raise UnsafeFileName(f"the path {_show(path)} is more than {MAX_DEPTH} folders deep")
    for part in parts:
        check_name(part)
    return parts


class PathChecker:
    """`check_path` for the many paths of one manifest: a folder that one path proved
    safe is not checked again for the next path in it (only the new name, the length
    and the depth are), which makes checking 10,000 files in a few folders several
    times cheaper. Any path not on that short way gets `check_path`'s full judgement,
    and the same error."""

    def __init__(self) -> None:
        self._folders: dict[str, tuple[str, ...]] = {}

    def __call__(self, path: str) -> tuple[str, ...]:
        folder, slash, name = path.rpartition("/")
        parts = self._folders.get(folder) if slash else None
        if (parts is None or len(parts) >= MAX_DEPTH
                or (len(path) > MAX_PATH_BYTES // 4
                    and len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES)):
            full = check_path(path)
            if slash:
                self._folders[folder] = full[:-1]
            return full
        return (*parts, check_name(name))


def local_name(name: str) -> str:
    """A local file's name made ready to offer (NFC); `UnsafeFileName` says why it cannot be."""
    if name.isascii():  # already NFC: the common case, without a normalization pass
        return check_name(name)
    return check_name(unicodedata.normalize("NFC", name))


_NUMBERED: Final = re.compile(r"^(?P<stem>.*) \((?P<n>\d+)\)$")


def numbered(name: str, n: int, *, is_dir: bool = False) -> str:
    """``report.pdf`` -> ``report (n).pdf``: the n-th alternative to a name that is taken.

    The extension stays last (``archive.tar.gz`` -> ``archive (1).tar.gz``); a folder,
    or a name with no extension (``.bashrc``), is numbered at its end. The result stays within
    `MAX_NAME_BYTES` by shortening the stem.
    """
    if is_dir or "." not in name.lstrip("."):
        stem, ext = name, ""
    else:
        stem, ext = name.rsplit(".", 1)
        ext = "." + ext
        if stem.lower().endswith(".tar"):  # archive.tar.gz keeps both parts together
            stem, ext = stem[:-4], stem[-4:] + ext
    suffix = f" ({n})"
    budget = MAX_NAME_BYTES - len((suffix + ext).encode("utf-8"))
    while len(stem.encode("utf-8")) > budget:
        stem = stem[:-1]
    return stem + suffix + ext

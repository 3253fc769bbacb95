"""Where a node keeps its files: the home folder, and the names inside it."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

HOME_ENV = "SIDEDOOR_HOME"
CONTROL_FILE = "control.json"
LOCK_FILE = "node.lock"
LOG_FILE = "node.log"


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``--home``, else ``$SIDEDOOR_HOME``, else the OS's per-user data folder."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser().absolute()
    return Path(platformdirs.user_data_dir("sidedoor", appauthor=False))


def ensure_home(home: Path) -> Path:
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return home

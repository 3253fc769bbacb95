"""Benchmark: from `sidedoor` on a fresh home to the web UI being interactive.

    python bench/ui_start.py [--rounds 3] [--discovery]

Each round, on a new empty home folder:
  1. `sidedoor --no-browser` runs as a user runs it (a subprocess, stdin not a
     terminal, so the display name is the default): it creates the identity, starts
     the node in the background and prints the one-time login link;
  2. an already-running Chromium (Debian's, headless, launched once before the
     rounds, as a user's browser is already open) opens the link and waits until the
     app has loaded its data and marked the page ready (``body[data-ready]``).
Then `sidedoor --no-browser` runs again on the same home (the node is up: only a
new link), and the node is stopped. Last, `sidedoor demo --no-wait --json` runs
(a broker and two nodes, invite, chat, mail, a 64 MB file): the time from starting
the command to the file being in Bob's folder, as the demo reports it.

Printed: the median of each stage, and the time to a plain `python -c "import
sidedoor.cli.main"` for comparison (the part of step 1 that is Python start-up and
imports). LAN discovery is off unless --discovery (it announces the node on this
machine's network); the node listens on 0.0.0.0 as a user's does.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

URL = re.compile(r"http://127\.0\.0\.1:\d+/login\?t=[A-Za-z0-9_-]+")
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-default-apps"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SIDEDOOR_HOME", "DISPLAY")}
    return env


def sidedoor(home: Path, *args: str) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "sidedoor", "--home", str(home), *args],
                            capture_output=True, text=True, env=_env(), timeout=60,
                            stdin=subprocess.DEVNULL, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"sidedoor {' '.join(args)} failed: {result.stderr.strip()}")
    return elapsed, result.stdout


def import_time() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import sidedoor.cli.main"], check=True, env=_env(),
                   timeout=60)
    return time.perf_counter() - start


def demo_time() -> float:
    """From starting `sidedoor demo` to the file being in Bob's folder."""
    start = time.time()
    result = subprocess.run([sys.executable, "-m", "sidedoor", "demo", "--no-wait", "--json"],
                            capture_output=True, text=True, env=_env(), timeout=180,
                            stdin=subprocess.DEVNULL, check=False)
    if result.returncode != 0:
        raise SystemExit(f"sidedoor demo failed: {result.stderr.strip()}")
    return float(json.loads(result.stdout)["file_received_at"]) - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--discovery", action="store_true",
                        help="leave LAN discovery on (announces on this machine's network)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    stages: dict[str, list[float]] = {"sidedoor (fresh home) -> link printed": [],
                                      "link opened -> UI interactive": [],
                                      "total: sidedoor -> UI interactive": [],
                                      "sidedoor again (node up) -> link printed": [],
                                      "python + import sidedoor.cli.main": [],
                                      "sidedoor demo -> file received": []}
    with sync_playwright() as p, tempfile.TemporaryDirectory() as tmp:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for n in range(args.rounds):
                home = Path(tmp) / f"home{n}"
                if not args.discovery:
                    sidedoor(home, "config", "set", "discovery", "off")
                try:
                    started, out = sidedoor(home, "--no-browser")
                    found = URL.search(out)
                    if not found:
                        raise SystemExit(f"no login link in: {out!r}")
                    context = browser.new_context()
                    page = context.new_page()
                    t0 = time.perf_counter()
                    page.goto(found.group(0))
                    page.wait_for_selector("body[data-ready]", timeout=30_000)
                    opened = time.perf_counter() - t0
                    context.close()
                    again, _ = sidedoor(home, "--no-browser")
                finally:
                    subprocess.run([sys.executable, "-m", "sidedoor", "--home", str(home), "down"],
                                   capture_output=True, env=_env(), timeout=30, check=False)
                stages["sidedoor (fresh home) -> link printed"].append(started)
                stages["link opened -> UI interactive"].append(opened)
                stages["total: sidedoor -> UI interactive"].append(started + opened)
                stages["sidedoor again (node up) -> link printed"].append(again)
                stages["python + import sidedoor.cli.main"].append(import_time())
                stages["sidedoor demo -> file received"].append(demo_time())
        finally:
            browser.close()

    floor = statistics.median(stages["python + import sidedoor.cli.main"])
    print(f"\n{args.rounds} rounds, discovery {'on' if args.discovery else 'off'}; medians")
    print(f"{'stage':45} {'seconds':>8} {'x import':>9}")
    for name, values in stages.items():
        med = statistics.median(values)
        print(f"{name:45} {med:8.2f} {med / floor:9.1f}")


if __name__ == "__main__":
    main()

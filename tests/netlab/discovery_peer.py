"""Run one `Discovery` and report what it sees as JSON lines (for tests/netlab).

    python discovery_peer.py LABEL NAME PORT IP [IP ...] [--ttl N] [--debug]

The identity is ``identity_from(LABEL)``. Commands come on stdin, one JSON object
a line: ``{"cmd": "update", "extra": {...}}`` or ``{"cmd": "stop"}`` (end of input
stops too). Output lines: ``{"event": "started", ...}``, ``{"event": "joined" |
"updated" | "left", "peer": {...}}``, ``{"event": "updated-self"}``, ``{"event":
"asyncio-warning"}`` (e.g. the loop was held over 0.1 s), ``{"event": "stopped", "tasks_left":
[...], "threads": n}``. Only ever run inside a network namespace the test created.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import threading
import time
from dataclasses import asdict
from typing import Any

from sidedoor.net.mdns import Discovery, DiscoveryEvent, PeerJoined, PeerLeft, PeerUpdated
from sidedoor.testing.sessions import identity_from

SLOW_CALLBACK = 0.1  # seconds


class _SlowCallbacks(logging.Handler):
    """asyncio's debug mode warns of callbacks slower than `SLOW_CALLBACK`."""

    def emit(self, record: logging.LogRecord) -> None:
        say(event="asyncio-warning", message=record.getMessage()[:500])


def say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def report(event: DiscoveryEvent) -> None:
    match event:
        case PeerJoined(peer):
            say(event="joined", peer=asdict(peer), t=time.monotonic())
        case PeerUpdated(peer, _):
            say(event="updated", peer=asdict(peer), t=time.monotonic())
        case PeerLeft(peer, reason):
            say(event="left", peer=asdict(peer), reason=reason, t=time.monotonic())


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("label")
    parser.add_argument("name")
    parser.add_argument("port", type=int)
    parser.add_argument("ips", nargs="+")
    parser.add_argument("--ttl", type=int, default=120)
    parser.add_argument("--debug", action="store_true", help="sidedoor's debug log to stderr")
    parser.add_argument("--zeroconf-debug", action="store_true", help="and zeroconf's")
    args = parser.parse_args()
    if args.debug or args.zeroconf_debug:
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
        logging.getLogger("zeroconf").setLevel(
            logging.DEBUG if args.zeroconf_debug else logging.WARNING
        )

    loop = asyncio.get_running_loop()
    # Report any callback that holds the loop for long (a blocking call in the loop).
    loop.set_debug(True)
    loop.slow_callback_duration = SLOW_CALLBACK
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(_SlowCallbacks())
    asyncio_log.setLevel(logging.WARNING)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    identity = identity_from(args.label)
    async with Discovery(
        identity.address, args.name, args.port, interfaces=args.ips, on_change=report,
        ttl=args.ttl,
    ) as discovery:
        say(event="started", address=identity.address, service=discovery.service_name,
            t=time.monotonic())
        while line := await stdin.readline():
            command = json.loads(line)
            if command["cmd"] == "update":
                await discovery.update_properties(command["extra"])
                say(event="updated-self", t=time.monotonic())
            elif command["cmd"] == "stop":
                break
    await discovery.aclose()  # a second time: must be harmless
    me = asyncio.current_task()
    left = [repr(t) for t in asyncio.all_tasks() if t is not me and not t.done()]
    say(event="stopped", t=time.monotonic(), tasks_left=left, threads=threading.active_count())


if __name__ == "__main__":
    asyncio.run(main())

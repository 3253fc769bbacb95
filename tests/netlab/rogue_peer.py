"""Announce services of type ``_sidedoor._tcp`` with hostile TXT records (for tests/netlab).

    python rogue_peer.py IP PORT JSON

JSON is a list of TXT records, each an object of strings (or null for a key with
no value; a value "hex:..." stands for those bytes, to send what is not UTF-8).
Prints ``{"event": "started"}`` once all are announced, then waits for the end of
its input and sends goodbyes. Only ever run inside a namespace the test created.
"""

from __future__ import annotations

import asyncio
import json
import sys

from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

SERVICE_TYPE = "_sidedoor._tcp.local."


async def main() -> None:
    ip, port = sys.argv[1], int(sys.argv[2])
    records = [
        {k: bytes.fromhex(v[4:]) if isinstance(v, str) and v.startswith("hex:") else v
         for k, v in record.items()}
        for record in json.loads(sys.argv[3])
    ]
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with AsyncZeroconf(interfaces=[ip]) as aiozc:
        infos = [
            AsyncServiceInfo(
                SERVICE_TYPE, f"rogue{i}.{SERVICE_TYPE}", port=port, properties=properties,
                server="rogue.local.", parsed_addresses=[ip], host_ttl=30, other_ttl=30,
            )
            for i, properties in enumerate(records)
        ]
        await asyncio.gather(*(aiozc.async_register_service(info) for info in infos))
        print(json.dumps({"event": "started"}), flush=True)
        await stdin.read()


if __name__ == "__main__":
    asyncio.run(main())

"""Outgoing TCP sockets that leave from the node's listening port.

A NAT maps the listening port once, for the node's session with its broker; the
broker observes that mapping and tells contacts to dial it. Dials that leave from
the same port (SO_REUSEPORT, shared with the listener) reuse the mapping, which is
what lets two NATs' mappings meet in a TCP simultaneous open.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket

from sidedoor.errors import ConnectError


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


async def connect_from(local_host: str, local_port: int, host: str, port: int,
                       timeout: float) -> socket.socket:
    """A connected non-blocking socket from ``local_host:local_port`` to ``host:port``."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        if local_port:
            bind_host = local_host if local_host not in ("", "0.0.0.0", "::") else (
                "::" if sock.family == socket.AF_INET6 else "0.0.0.0")
            sock.bind((bind_host, local_port))
        async with asyncio.timeout(timeout):
            await loop.sock_connect(sock, (host, port))
    except TimeoutError:
        sock.close()
        raise ConnectError(f"{host}:{port} did not answer within {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise ConnectError(f"cannot connect to {host}:{port}: {exc.strerror or exc}") from exc
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_preferring(local_host: str, local_port: int, host: str, port: int,
                             timeout: float) -> socket.socket:
    """From the listening port if the kernel lets us, else from any port."""
    if local_port:
        with contextlib.suppress(ConnectError):
            return await connect_from(local_host, local_port, host, port, timeout)
    return await connect_from(local_host, 0, host, port, timeout)

"""Plain-socket probes for the NAT lab (test_nat.py), run inside a namespace.

    serve PORT [PORT ...]      listen on each port; print "ready"; per connection read
                               one command line: "whoami" -> "IP PORT" of the peer as
                               seen here; "echo" -> echo until EOF; "sink" -> read until
                               EOF, then answer "COUNT SHA256".
    dial HOST PORT [--bind P] [--timeout S]
                               connect, ask "whoami"; print JSON {outcome, elapsed,
                               local, seen}; outcome: ok, refused, reset, timeout.
    punch LPORT HOST PORT START BUDGET
                               TCP simultaneous open: from time START (time.time()),
                               bind LPORT and connect to HOST:PORT, retrying until it
                               works or BUDGET seconds passed; then exchange a line.
    rtt HOST PORT COUNT        COUNT one-byte request/reply times over one connection.
    upload HOST PORT BYTES     send BYTES random bytes to "sink"; check its answer.

Every wait is bounded; every result is one JSON line on stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import socketserver
import sys
import time
from typing import Any

IO_TIMEOUT = 10.0


def out(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


class Handler(socketserver.StreamRequestHandler):
    timeout = IO_TIMEOUT
    rbufsize = 0  # unbuffered: what follows the command line stays in the socket

    def handle(self) -> None:
        command = self.rfile.readline().strip()
        if command == b"whoami":
            host, port = self.client_address[:2]
            self.wfile.write(f"{host} {port}\n".encode())
        elif command == b"echo":
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while data := self.connection.recv(65536):
                self.connection.sendall(data)
        elif command == b"sink":
            digest, count = hashlib.sha256(), 0
            while data := self.connection.recv(65536):
                digest.update(data)
                count += len(data)
            self.wfile.write(f"{count} {digest.hexdigest()}\n".encode())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def serve(ports: list[int]) -> None:
    import threading

    servers = [Server(("0.0.0.0", port), Handler) for port in ports]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    time.sleep(120)  # bounded; the lab kills it long before


def connect(host: str, port: int, bind: int, timeout: float) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if bind:
        sock.bind(("0.0.0.0", bind))
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    sock.settimeout(IO_TIMEOUT)
    return sock


def read_line(sock: socket.socket) -> str:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def dial(host: str, port: int, bind: int, timeout: float) -> None:
    start = time.monotonic()
    try:
        sock = connect(host, port, bind, timeout)
    except ConnectionRefusedError:
        outcome = "refused"
    except ConnectionResetError:
        outcome = "reset"
    except TimeoutError:
        outcome = "timeout"
    else:
        with sock:
            local = sock.getsockname()[:2]
            sock.sendall(b"whoami\n")
            seen = read_line(sock).split()
        out(outcome="ok", elapsed=time.monotonic() - start, local=local,
            seen=[seen[0], int(seen[1])])
        return
    out(outcome=outcome, elapsed=time.monotonic() - start)


def punch(lport: int, host: str, port: int, start: float, budget: float) -> None:
    time.sleep(max(0.0, start - time.time()))
    began = time.monotonic()
    deadline = began + budget
    attempts, errors = 0, []
    while (left := deadline - time.monotonic()) > 0:
        attempts += 1
        try:
            sock = connect(host, port, lport, min(1.5, left))
        except OSError as exc:  # timed out, refused, reset: try again
            errors.append(type(exc).__name__)
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            continue
        with sock:
            sock.sendall(f"hello from {lport}\n".encode())
            got = read_line(sock)
            out(ok=True, attempts=attempts, errors=errors, elapsed=time.monotonic() - began,
                local=sock.getsockname()[:2], peer=sock.getpeername()[:2], got=got)
        return
    out(ok=False, attempts=attempts, errors=errors, elapsed=time.monotonic() - began)


def rtt(host: str, port: int, count: int) -> None:
    with connect(host, port, 0, IO_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"echo\n")
        samples = []
        for _ in range(count):
            start = time.monotonic()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise SystemExit("echo broke off")
            samples.append(time.monotonic() - start)
    out(samples=samples)


def upload(host: str, port: int, size: int) -> None:
    payload = os.urandom(size)
    start = time.monotonic()
    with connect(host, port, 0, IO_TIMEOUT) as sock:
        sock.sendall(b"sink\n" + payload)
        sock.shutdown(socket.SHUT_WR)
        count, digest = read_line(sock).split()
    out(ok=int(count) == size and digest == hashlib.sha256(payload).hexdigest(),
        seconds=time.monotonic() - start)


def main(argv: list[str]) -> None:
    command, args = argv[0], argv[1:]
    if command == "serve":
        serve([int(port) for port in args])
    elif command == "dial":
        bind, timeout = 0, 2.0
        if "--bind" in args:
            i = args.index("--bind")
            bind = int(args.pop(i + 1))
            args.pop(i)
        if "--timeout" in args:
            i = args.index("--timeout")
            timeout = float(args.pop(i + 1))
            args.pop(i)
        dial(args[0], int(args[1]), bind, timeout)
    elif command == "punch":
        punch(int(args[0]), args[1], int(args[2]), float(args[3]), float(args[4]))
    elif command == "rtt":
        rtt(args[0], int(args[1]), int(args[2]))
    elif command == "upload":
        upload(args[0], int(args[1]), int(args[2]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

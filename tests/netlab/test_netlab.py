"""The namespace helper itself: it builds what it says and leaves nothing behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from sidedoor.testing.netlab import NetLab, list_namespaces, unavailable_reason


@pytest.fixture(autouse=True)
def _need_netlab() -> None:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"netlab: {reason}")


def root_links() -> str:
    done = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10)
    return "\n".join(line.split(":")[1] for line in done.stdout.splitlines())


CONNECT = (
    "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)"
)
LISTEN = (
    "import socket, sys; s = socket.create_server((sys.argv[1], 0), family=socket.AF_INET6 "
    "if ':' in sys.argv[1] else socket.AF_INET); print(s.getsockname()[1], flush=True); "
    "s.accept()"
)


def test_bridge_lan_connects_every_host_and_is_deleted_even_on_failure() -> None:
    before = root_links()
    with pytest.raises(RuntimeError, match="boom"), NetLab() as lab:
        hosts = lab.lan(3, ipv6_subnet="fd5e:d00:2::/64")
        assert [h.ipv4 for h in hosts] == ["10.250.0.1", "10.250.0.2", "10.250.0.3"]
        names = set(lab.namespaces)
        assert names <= set(list_namespaces())
        assert root_links() == before  # nothing in the root namespace
        routes = hosts[0].run("ip", "route").stdout
        assert "224.0.0.0/4 dev eth0" in routes
        for address in (hosts[2].ipv4, hosts[2].ipv6):
            assert address is not None
            server = hosts[2].popen(
                sys.executable, "-c", LISTEN, address, stdout=subprocess.PIPE
            )
            try:
                assert server.stdout is not None
                port = server.stdout.readline().strip()
                hosts[0].run(sys.executable, "-c", CONNECT, address, port)
                assert server.wait(timeout=10) == 0
            finally:
                if server.poll() is None:
                    server.kill()
                    server.wait()
                if server.stdout is not None:
                    server.stdout.close()
        raise RuntimeError("boom")
    assert not names & set(list_namespaces())
    assert root_links() == before


def test_leftovers_of_a_crashed_run_are_removed() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"sdlab-{gone.pid}-1-h0"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=10)
    try:
        with NetLab() as lab:
            assert stale not in list_namespaces()
            lab.namespace("solo")
            assert lab.namespaces[0] in list_namespaces()
    finally:
        subprocess.run(["ip", "netns", "delete", stale], capture_output=True, timeout=10)
    assert lab.namespaces == []

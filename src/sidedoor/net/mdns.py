"""LAN discovery over mDNS / DNS-SD (zeroconf): announce this node, see the others.

One `Discovery` per node. It registers the service ``<instance>._sidedoor._tcp.local.``
with a TXT record, browses for the same type, and keeps `Discovery.nearby`: the peers
seen on the LAN, keyed by their sidedoor address. Changes are reported to the
``on_change`` callback as `PeerJoined`, `PeerUpdated` and `PeerLeft` events.

The TXT record (version 1)::

    v=1                 the record's version; other versions are ignored
    id=sd...            the node's sidedoor address (`sidedoor.identity`), with its check
    name=Alice          the display name: at most 64 characters, control characters stripped
    inv=7,12            extras set with `Discovery.update_properties` (e.g. invite nameplates)

Everything read from the wire goes through `check_txt_bytes` / `parse_txt`, pure
functions: a record that is oversized or malformed makes the peer invisible (logged
once, at debug level); nothing from the wire raises into the event loop. An mDNS
record proves nothing: the address a peer announces is only a hint until the
Noise handshake proves it.

A peer leaves when zeroconf reports its service removed (its goodbye packets), or
when its SRV record's TTL lapses by the injected ``clock``. zeroconf itself keeps
PTR records at least 1125 s and never refreshes SRV records, so `Discovery` does
RFC 6762 5.2 cache maintenance for the SRV of each nearby peer: a query at 80, 85,
90 and 95 % of the TTL. We announce every record with a short TTL (`DEFAULT_TTL`),
so a node that vanishes without a goodbye (crash, cable pulled) is dropped within
about that time.

zeroconf's browser misses a TXT record that goes back to a value the cache still
holds (``inv=7`` -> ``{}`` -> ``inv=7``), and its cache lookup can then return the
older record; so a small record listener watches TXT records, and the resolver
reads the newest live TXT record from the cache itself.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final

import ifaddr
from zeroconf import (  # type: ignore[attr-defined]  # DNS* are re-exported, not in __all__
    BadTypeInNameException,
    DNSOutgoing,
    DNSQuestion,
    DNSRecord,
    DNSText,
    InterfaceChoice,
    IPVersion,
    NonUniqueNameException,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
    current_time_millis,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from sidedoor.errors import DiscoveryError, LocalProtocolError
from sidedoor.identity import decode_address, encode_address
from sidedoor.names import clean_text as sanitize_name
from sidedoor.proto.lan_record import (
    MAX_NAME_CHARS,
    MAX_TXT_BYTES,
    MAX_TXT_KEYS,
    TXT_VERSION,
    Rejected,
    TxtRecord,
    build_txt,
    check_txt,
    check_txt_bytes,
    fit_name,
    parse_txt,
    split_txt,
)

__all__ = [
    "DEFAULT_TTL",
    "MAX_NAME_CHARS",
    "MAX_TXT_BYTES",
    "MAX_TXT_KEYS",
    "SERVICE_TYPE",
    "TXT_VERSION",
    "Discovery",
    "DiscoveryError",
    "DiscoveryEvent",
    "NearbyPeer",
    "PeerJoined",
    "PeerLeft",
    "PeerUpdated",
    "Rejected",
    "TxtRecord",
    "build_txt",
    "check_txt",
    "check_txt_bytes",
    "parse_txt",
    "sanitize_name",
    "split_txt",
]

log = logging.getLogger(__name__)

SERVICE_TYPE: Final = "_sidedoor._tcp.local."
DEFAULT_TTL: Final = 120  # seconds, for every record we announce (RFC 6762's host-record TTL)

MAX_HOSTS: Final = 16  # addresses kept per peer
MAX_TRACKED: Final = 1024  # service names tracked at once; more are ignored

_INSTANCE_PREFIX_CHARS: Final = 16  # "sd" + 14 base32 characters = 70 bits of the key
_MAX_LOGGED: Final = 1024
_QUERY_AT: Final = (0.80, 0.85, 0.90, 0.95)  # fractions of a TTL (RFC 6762 5.2)
_QUERY_JITTER: Final = 0.02
_MIN_PUBLISH_INTERVAL: Final = 1.0  # seconds between two announcements of our TXT record
_FLAGS_QR_QUERY: Final = 0x0000
_TYPE_TXT: Final = 16
_TYPE_SRV: Final = 33
_CLASS_IN: Final = 1


# ----------------------------------------------------------------- peers and events


@dataclass(frozen=True, slots=True)
class NearbyPeer:
    """A peer seen on the LAN. Nothing here is proven until a handshake with it."""

    address: str
    name: str
    hosts: list[str]  # IPv4 first, then IPv6 (link-local ones with "%scope")
    port: int
    properties: dict[str, str]  # the extra TXT entries; v, id and name are the fields above
    last_seen: float  # by the Discovery's clock


@dataclass(frozen=True, slots=True)
class PeerJoined:
    peer: NearbyPeer


@dataclass(frozen=True, slots=True)
class PeerUpdated:
    peer: NearbyPeer
    previous: NearbyPeer


@dataclass(frozen=True, slots=True)
class PeerLeft:
    peer: NearbyPeer  # as last seen
    reason: str  # "removed" (goodbye, or zeroconf's own expiry) or "expired" (our TTL check)


DiscoveryEvent = PeerJoined | PeerUpdated | PeerLeft


@dataclass(slots=True)
class _Watch:
    """How we follow one nearby peer's liveness."""

    name: str  # the service name its `NearbyPeer` came from
    expires: float  # by our clock
    created: float = -1.0  # zeroconf's stamp of the SRV record we last saw
    queries: int = 0  # refresh queries sent for that record
    jitter: float = 0.0


def _expiry(record: DNSRecord) -> float:
    """When a cached record expires. The current one of a unique set expires last:
    zeroconf re-stamps the records it flushes with a TTL of 1 s (RFC 6762 10.2)."""
    when: float = record.created + record.ttl * 1000
    return when


def _same_advert(a: NearbyPeer, b: NearbyPeer) -> bool:
    return (a.name, a.hosts, a.port, a.properties) == (b.name, b.hosts, b.port, b.properties)


def _dialable(addresses: list[str]) -> list[str]:
    """Drop IPv6 link-local addresses that came without a scope (no way to dial them).

    avahi announces its fe80:: address over IPv4 too, where zeroconf learns no scope.
    """
    kept: list[str] = []
    for address in addresses:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            continue
        if not (isinstance(ip, ipaddress.IPv6Address) and ip.is_link_local and not ip.scope_id):
            kept.append(address)
    return kept


def _local_addresses() -> list[str]:
    """This host's addresses worth announcing (blocking: run it in a thread)."""
    found: list[str] = []
    loopback: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                parsed = ipaddress.ip_address(text.split("%")[0])
            except ValueError:
                continue
            if parsed.is_loopback:
                loopback.append(str(parsed))
            elif not parsed.is_link_local:
                found.append(str(parsed))
    return sorted(set(found or loopback), key=lambda a: (":" in a, a))


class _TxtListener(RecordUpdateListener):
    """Passes every TXT record zeroconf receives to `Discovery._txt_arrived`."""

    def __init__(self, callback: Callable[[str, bytes], None]) -> None:
        self._callback = callback

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            record = update.new
            if isinstance(record, DNSText) and not record.is_expired(now):
                self._callback(record.name, record.text)


# ----------------------------------------------------------------- the asyncio glue


class Discovery:
    """Announce this node on the LAN and keep `nearby` up to date.

    ``interfaces`` is a list of IP addresses to use, or ``InterfaceChoice.All``.
    ``on_change`` is called in the event loop for every `DiscoveryEvent`; an
    exception from it is logged, never raised into zeroconf. ``clock`` stamps
    ``last_seen`` and decides TTL expiry. ``ttl`` is the TTL of the records we
    announce (a peer that vanishes without a goodbye is dropped by others after it).
    """

    def __init__(
        self,
        address: str,
        name: str,
        port: int,
        *,
        interfaces: Sequence[str] | InterfaceChoice = InterfaceChoice.All,
        on_change: Callable[[DiscoveryEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ttl: int = DEFAULT_TTL,
        ip_version: IPVersion | None = None,
        sweep_interval: float | None = None,
        resolve_timeout: float = 3.0,
    ) -> None:
        self.address = encode_address(decode_address(address))
        if not 0 < port < 65536:
            raise ValueError(f"port {port} is not a TCP port")
        if ttl < 2:
            raise ValueError("the TTL must be at least 2 seconds (1 means 'goodbye' in mDNS)")
        self.name = fit_name(name)
        self.port = port
        self.interfaces: list[str] | InterfaceChoice = (
            interfaces if isinstance(interfaces, InterfaceChoice) else list(interfaces)
        )
        self.on_change = on_change
        self.clock = clock
        self.ttl = ttl
        self.ip_version = ip_version
        self.sweep_interval = sweep_interval or min(1.0, ttl / 20)
        self.resolve_timeout = resolve_timeout
        self.instance = self.address[:_INSTANCE_PREFIX_CHARS]
        self.nearby: dict[str, NearbyPeer] = {}
        self.extras: dict[str, str] = {}

        self._txt = build_txt(self.address, self.name)
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._listener = _TxtListener(self._txt_arrived)
        self._info: AsyncServiceInfo | None = None
        self._announcing: asyncio.Future[Any] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._txt_sent: dict[str, str] = {}
        self._published_at = 0.0  # by the loop's clock
        self._lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()  # names that changed while being resolved
        self._names: dict[str, str] = {}  # service name -> address it announced
        self._texts: dict[str, bytes] = {}  # service name -> the TXT record last resolved
        self._watch: dict[str, _Watch] = {}  # address -> where `nearby` came from, its expiry
        self._lapsed: set[str] = set()  # names our sweep expired, watched for a comeback
        self._logged: set[tuple[str, str]] = set()

    # ------------------------------------------------------------- lifecycle
    async def __aenter__(self) -> Discovery:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def service_name(self) -> str:
        """Our service's full name (zeroconf may have renamed it to stay unique)."""
        return self._info.name if self._info is not None else f"{self.instance}.{SERVICE_TYPE}"

    async def start(self) -> None:
        """Open the mDNS sockets, start browsing, and announce this node (about 1 s)."""
        if self._started or self._closed:
            raise LocalProtocolError("a Discovery can be started once")
        self._started = True
        try:
            if isinstance(self.interfaces, InterfaceChoice):
                hosts = await asyncio.to_thread(_local_addresses)
            else:
                hosts = [a.split("%")[0] for a in self.interfaces]
            try:
                self._aiozc = AsyncZeroconf(interfaces=self.interfaces, ip_version=self.ip_version)
            except (OSError, ValueError) as exc:
                raise DiscoveryError(f"LAN discovery cannot start: {exc}") from exc
            zc = self._aiozc.zeroconf
            zc.async_add_listener(self._listener, None)
            self._browser = AsyncServiceBrowser(
                zc, SERVICE_TYPE, handlers=[self._on_service_state_change]
            )
            async with self._lock:
                self._info = AsyncServiceInfo(
                    SERVICE_TYPE,
                    f"{self.instance}.{SERVICE_TYPE}",
                    port=self.port,
                    properties=self._txt,
                    server=f"{self.instance}.local.",
                    parsed_addresses=hosts,
                    host_ttl=self.ttl,
                    other_ttl=self.ttl,
                )
                try:
                    announcing = await self._aiozc.async_register_service(
                        self._info, allow_name_change=True
                    )
                except (NonUniqueNameException, BadTypeInNameException) as exc:
                    raise DiscoveryError(f"LAN discovery cannot announce this node: {exc}") from exc
                self._announcing = asyncio.ensure_future(announcing)
                self._txt_sent = dict(self._txt)
                self._published_at = asyncio.get_running_loop().time()
            self._spawn(self._sweep_forever())
            log.debug("mDNS: announcing %s on %s", self.service_name, hosts)
        except Exception as exc:
            closed_meanwhile = self._closed
            await self.aclose()
            if closed_meanwhile and not isinstance(exc, DiscoveryError):
                raise DiscoveryError("LAN discovery was closed while it started") from exc
            raise
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Send goodbyes and stop. Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        pending: list[asyncio.Future[Any]] = list(self._tasks)
        if self._announcing is not None:
            pending.append(self._announcing)
            self._announcing = None
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._tasks.clear()
        self._resolving.clear()
        if self._aiozc is not None:
            zc = self._aiozc.zeroconf
            zc.async_remove_listener(self._listener)
            if self._browser is not None:
                await self._browser.async_cancel()
            try:
                # Goodbye packets (three, 125 ms apart), then the sockets are closed.
                await asyncio.wait_for(self._aiozc.async_close(), timeout=5)
            except (TimeoutError, OSError) as exc:
                log.debug("mDNS: closing zeroconf: %r", exc)
        self._browser = None
        self._aiozc = None
        self.nearby.clear()

    # ------------------------------------------------------------- announcing
    async def update_properties(self, extra: dict[str, str]) -> None:
        """Replace the extra TXT entries we announce (``{}`` removes them all).

        Raises ``ValueError`` for entries peers would refuse. A record goes out at most
        once a second (RFC 6762 6; zeroconf receivers also drop a packet identical to
        one seen in the last 0.8 s): calls within that second are merged and the
        latest is sent when it ends. Does nothing once closed.
        """
        txt = build_txt(self.address, self.name, extra)
        async with self._lock:
            if self._closed or txt == self._txt:
                return
            self.extras, self._txt = dict(extra), txt
            if self._aiozc is None or self._info is None or self._publisher is not None:
                return  # start() or the pending publisher sends the latest record
            wait = self._published_at + _MIN_PUBLISH_INTERVAL - asyncio.get_running_loop().time()
            if wait > 0:
                self._publisher = self._spawn(self._publish_later(wait))
            else:
                await self._publish()

    async def _publish_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        async with self._lock:
            self._publisher = None
            await self._publish()

    async def _publish(self) -> None:
        """Announce ``self._txt`` if it is not what we announced last (holding the lock)."""
        if self._aiozc is None or self._info is None or self._txt == self._txt_sent:
            return
        if self._announcing is not None:
            # The repeats of the last announcement would resend the old record.
            self._announcing.cancel()
        old = self._info
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            old.name,
            port=old.port,
            properties=self._txt,
            server=old.server,
            addresses=old.addresses,
            host_ttl=self.ttl,
            other_ttl=self.ttl,
        )
        self._txt_sent = self._txt
        self._announcing = asyncio.ensure_future(
            await self._aiozc.async_update_service(self._info)
        )
        self._published_at = asyncio.get_running_loop().time()

    # ------------------------------------------------------------- browsing
    def _on_service_state_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """zeroconf's browser callback, in the event loop. Must never raise."""
        try:
            if self._closed or service_type != SERVICE_TYPE or name == self.service_name:
                return
            if state_change is ServiceStateChange.Removed:
                self._service_removed(name)
            else:
                self._schedule_resolve(name)
        except Exception:
            log.exception("mDNS: handling %s for %r failed", state_change, name)

    def _txt_arrived(self, name: str, text: bytes) -> None:
        """A TXT record came in (the cache does not hold it yet). Must never raise."""
        try:
            if (
                not self._closed
                and name.lower().endswith("." + SERVICE_TYPE)
                and name != self.service_name
                and self._texts.get(name) != text
            ):
                self._schedule_resolve(name)
        except Exception:
            log.exception("mDNS: handling a TXT record for %r failed", name)

    def _schedule_resolve(self, name: str) -> None:
        if name in self._resolving:
            self._again.add(name)
            return
        if name not in self._texts and len(self._texts) + len(self._resolving) >= MAX_TRACKED:
            self._debug_once(name, f"over {MAX_TRACKED} services on the LAN")
            return
        self._resolving[name] = self._spawn(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        try:
            while True:
                self._again.discard(name)
                await self._resolve_once(name)
                if name not in self._again:
                    return
        except Exception:
            log.exception("mDNS: resolving %r failed", name)
        finally:
            if self._resolving.get(name) is asyncio.current_task():
                del self._resolving[name]

    async def _resolve_once(self, name: str) -> None:
        if self._aiozc is None:
            return
        zc = self._aiozc.zeroconf
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zc, self.resolve_timeout * 1000):
            self._debug_once(name, "did not answer a resolve in time")
            return
        text = self._newest_txt(name) or info.text
        self._texts[name] = text
        checked = check_txt_bytes(text)
        port = info.port
        if isinstance(checked, Rejected) or port is None or not 0 < port < 65536:
            self._debug_once(name, checked.reason if isinstance(checked, Rejected) else
                             f"bad port {port!r}")
            self._forget(name, "removed")  # it may have been valid before
            return
        if checked.address == self.address:
            # Ourselves under a name zeroconf picked, or a clone of our identity.
            self._forget(name, "removed")
            return
        if self._names.get(name, checked.address) != checked.address:
            self._forget(name, "removed")  # the name now stands for another identity
        now = self.clock()
        peer = NearbyPeer(
            address=checked.address,
            name=checked.name,
            hosts=_dialable(info.parsed_scoped_addresses())[:MAX_HOSTS],
            port=port,
            properties=checked.extras,
            last_seen=now,
        )
        self._names[name] = peer.address
        self._lapsed.discard(name)
        watch = self._watch.get(peer.address)
        if watch is None or watch.name != name:
            self._watch[peer.address] = watch = _Watch(name, now + self.ttl)
        self._refresh(watch, now)
        previous = self.nearby.get(peer.address)
        self.nearby[peer.address] = peer
        if previous is None:
            self._emit(PeerJoined(peer))
        elif not _same_advert(previous, peer):
            self._emit(PeerUpdated(peer, previous))

    def _newest_txt(self, name: str) -> bytes | None:
        """The text of the current live TXT record for ``name``."""
        if self._aiozc is None:
            return None
        now_ms = current_time_millis()
        records = self._aiozc.zeroconf.cache.async_all_by_details(name, _TYPE_TXT, _CLASS_IN)
        live = [r for r in records if isinstance(r, DNSText) and not r.is_expired(now_ms)]
        if not live:
            return None
        text: bytes = max(live, key=_expiry).text
        return text

    def _service_removed(self, name: str) -> None:
        task = self._resolving.pop(name, None)
        if task is not None:
            task.cancel()
        self._again.discard(name)
        self._lapsed.discard(name)
        self._texts.pop(name, None)
        self._forget(name, "removed")

    def _forget(self, name: str, reason: str) -> None:
        """The service ``name`` no longer stands for the peer it named, if any."""
        address = self._names.pop(name, None)
        watch = self._watch.get(address) if address is not None else None
        if address is None or watch is None or watch.name != name:
            return
        self._drop(address, reason)
        # The same identity may still be announced under another name.
        for other, other_address in self._names.items():
            if other_address == address:
                self._schedule_resolve(other)

    def _drop(self, address: str, reason: str) -> None:
        self._watch.pop(address, None)
        peer = self.nearby.pop(address, None)
        if peer is not None:
            self._emit(PeerLeft(peer, reason))

    # ------------------------------------------------------------- expiry
    def _srv(self, name: str) -> DNSRecord | None:
        if self._aiozc is None:
            return None
        now_ms = current_time_millis()
        records = self._aiozc.zeroconf.cache.async_all_by_details(name, _TYPE_SRV, _CLASS_IN)
        live = [r for r in records if not r.is_expired(now_ms)]
        return max(live, key=_expiry) if live else None

    def _refresh(self, watch: _Watch, now: float) -> bool:
        """Move the expiry to the SRV record's, query it when due; True if it was refreshed."""
        record = self._srv(watch.name)
        if record is None:
            return False
        remaining = record.get_remaining_ttl(current_time_millis())
        watch.expires = now + remaining
        refreshed = record.created != watch.created
        if refreshed:
            watch.created, watch.queries = record.created, 0
            # Random, so that one querier goes first and its answer refreshes everyone.
            watch.jitter = random.uniform(0, _QUERY_JITTER)
        elapsed = 1 - remaining / record.ttl if record.ttl else 1.0
        if watch.queries < len(_QUERY_AT) and elapsed >= _QUERY_AT[watch.queries] + watch.jitter:
            watch.queries += 1
            self._query_srv(watch.name)
        return bool(refreshed)

    def _query_srv(self, name: str) -> None:
        if self._aiozc is None:
            return
        out = DNSOutgoing(_FLAGS_QR_QUERY)
        out.add_question(DNSQuestion(name, _TYPE_SRV, _CLASS_IN))
        self._aiozc.zeroconf.async_send(out)

    def sweep(self) -> None:
        """Drop peers whose TTL lapsed by our clock; stamp `last_seen` of refreshed ones."""
        now = self.clock()
        for address, watch in list(self._watch.items()):
            if self._refresh(watch, now):
                peer = self.nearby.get(address)
                if peer is not None:
                    self.nearby[address] = NearbyPeer(
                        peer.address, peer.name, peer.hosts, peer.port, peer.properties, now
                    )
            if now >= watch.expires:
                self._names.pop(watch.name, None)
                self._texts.pop(watch.name, None)
                self._lapsed.add(watch.name)
                self._drop(address, "expired")
        # A record that lapsed here and then came back brings no browser event
        # (zeroconf still held the stale record), so look for comebacks ourselves.
        for name in list(self._lapsed):
            if self._srv(name) is not None:
                self._lapsed.discard(name)
                self._schedule_resolve(name)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                self.sweep()
            except Exception:
                log.exception("mDNS: the expiry sweep failed")

    # ------------------------------------------------------------- helpers
    def _emit(self, event: DiscoveryEvent) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change(event)
        except Exception:
            log.exception("mDNS: the on_change callback failed for %r", event)

    def _debug_once(self, name: str, reason: str) -> None:
        key = (name, reason)
        if key in self._logged:
            return
        if len(self._logged) >= _MAX_LOGGED:
            self._logged.clear()
        self._logged.add(key)
        log.debug("mDNS: ignoring %r: %s", name, reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

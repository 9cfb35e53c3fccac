"""Flood limits for the public choice page: token buckets per link and per client address, kept in the serving
process.

A bucket holds up to `per_minute` requests and refills at `per_minute` a minute, so a person who clicks twice is
never refused while a script posting hundreds of forms a second gets 429 with Retry-After after the first burst.
The limits live in one process: with several `notifier serve` processes each counts on its own (a proxy in front
can limit across them).

Behind a reverse proxy every request comes from the proxy's address; list the proxy in Settings.trusted_proxies
and the client is the nearest X-Forwarded-For hop that is not itself a trusted proxy. X-Forwarded-For from anyone
else is ignored: a client could write any address there and so dodge its own limit.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from notifier.store.settings import ConfigError

MAX_KEYS = 100_000  # the least recently seen keys are forgotten beyond this (memory stays bounded under a flood)


class Buckets:
    """One token bucket per key: `per_minute` requests a minute on average, in bursts of up to as many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_keys: int = MAX_KEYS
                 ) -> None:
        if per_minute < 1:
            raise ConfigError(f"a request limit must be at least 1 a minute, not {per_minute}")
        self.burst = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._max_keys = max_keys
        self._levels: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Spend one request for `key`: 0.0 when allowed, else the seconds until one would be."""
        with self._lock:
            now = self._clock()
            tokens, at = self._levels.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._levels[key] = (tokens, now)
            while len(self._levels) > self._max_keys:
                self._levels.popitem(last=False)
            return wait


class ChoiceThrottle:
    """The choice page's two limits: per link (the choice a verified token names) and per client address."""

    def __init__(self, per_link: int, per_address: int, trusted_proxies: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.per_link = Buckets(per_link, clock)
        self.per_address = Buckets(per_address, clock)
        self.trusted = trusted_networks(trusted_proxies)

    def wait(self, link: str | None, remote_addr: str | None, forwarded_for: str | None) -> float:
        """0.0 when this POST may go ahead, else the seconds the client must wait (for Retry-After). `link` names
        what a verified token is for, so that altered spellings of one link share its budget; None (a token that
        did not verify) counts against the address only, or made-up tokens would each get a fresh budget."""
        address = client_address(remote_addr or "", forwarded_for, self.trusted)
        return self.per_address.take(f"ip:{address}") or (self.per_link.take(f"link:{link}") if link else 0.0)


def trusted_networks(entries: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Settings.trusted_proxies as networks ("10.0.0.5", "10.0.0.0/8", "::1"); a bad entry is a ConfigError."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"trusted_proxies entry {entry!r} is not an IP address or network") from None
    return tuple(networks)


def client_address(remote_addr: str, forwarded_for: str | None,
                   trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """The client's address: the peer itself, or, when the peer is a trusted proxy, the nearest X-Forwarded-For
    hop (reading from the right) that is not a trusted proxy."""
    if not forwarded_for or not _is_trusted(remote_addr, trusted):
        return remote_addr
    hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop
    return hops[0] if hops else remote_addr


def _is_trusted(address: str, trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)

"""Sliding-window rate limits, keyed by whatever the caller counts (an IP, an identity)."""

from __future__ import annotations

from collections import deque


class RateLimiter:
    """At most ``count`` events per ``window`` seconds for each key."""

    def __init__(self, count: int, window: float, max_keys: int = 4096) -> None:
        self.count, self.window, self.max_keys = count, window, max_keys
        self._seen: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float) -> bool:
        if len(self._seen) >= self.max_keys:
            self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > now - self.window}
        times = self._seen.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) >= self.count:
            return False
        times.append(now)
        return True

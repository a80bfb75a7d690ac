"""The daemon's two rate limits: on incoming flows (serve.max_flows_per_s) and on its warnings."""

from __future__ import annotations

import logging
import time
from typing import Any

from .logfmt import ev


class RateLimitedLog:
    """At most one warning per key every ``every`` seconds, with the count of what was suppressed."""

    def __init__(self, logger: logging.Logger, every: float = 5.0) -> None:
        self.logger, self.every = logger, every
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warn(self, key: str, msg: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        if len(self._last) > 1024:
            self._last.clear()
        self.logger.warning(msg + (f" (+{n} more like it suppressed)" if n else ""), *args,
                            extra=ev(key.split(":", 1)[0], key=key, suppressed=n))


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` (default: one second's worth, at least 1) held."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.t = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
        self.t = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

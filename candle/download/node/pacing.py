"""A byte budget shared by every connection that draws from it: a node's uplink, its downlink, or one
connection of the test hub.

``CANDLE_DOWNLOAD_PEER_BANDWIDTH`` is an operator's budget for the node's uplink (so distributing
weights never starves serving traffic) and ``CANDLE_DOWNLOAD_BANDWIDTH`` the same for its downlink:
not a per-connection speed, but what all of the node's connections together get. Each send (or
receive) reserves its slot on one shared timeline, in the order the threads ask, so the total over
any window is at most the rate plus one chunk, and an idle link saves up no credit for a later burst.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Paces senders (or receivers) in several threads to ``bytes_per_s`` in total.

    ``clock`` and ``sleep`` are the real ones but for tests, which check the schedule exactly
    instead of measuring rates on a busy machine.
    """

    def __init__(
        self,
        bytes_per_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if bytes_per_s <= 0:
            raise ValueError(f"an upload cap must be positive, got {bytes_per_s}")
        self.bytes_per_s = bytes_per_s
        self._clock = clock
        self._sleep = sleep
        self._next = clock()  # when the uplink is free again, as reserved so far
        self._lock = threading.Lock()

    @property
    def chunk(self) -> int:
        """Bytes per send: a short slice of the budget (<= 1/64 s), so a relay passes bytes on promptly."""
        return max(16 * 1024, min(1024 * 1024, int(self.bytes_per_s / 64)))

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may be sent (reserving them)."""
        with self._lock:
            now = self._clock()
            start = max(self._next, now)
            self._next = start + n / self.bytes_per_s
        if start > now:
            self._sleep(start - now)

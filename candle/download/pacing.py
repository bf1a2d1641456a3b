"""One upload budget per node: every connection of the peer server draws from the same bucket.

``CANDLE_DOWNLOAD_PEER_BANDWIDTH`` is an operator's budget for the node's uplink (so distributing
weights never starves serving traffic), not a per-connection speed: with four peers copying at
once, the four together get it. Each send reserves its slot on one shared timeline, in the order
the senders ask, so the total over any window is at most the rate plus one chunk, and an idle
uplink saves up no credit for a later burst.
"""

from __future__ import annotations

import threading
import time


class TokenBucket:
    """Paces senders in several threads to ``bytes_per_s`` in total."""

    def __init__(self, bytes_per_s: float) -> None:
        if bytes_per_s <= 0:
            raise ValueError(f"an upload cap must be positive, got {bytes_per_s}")
        self.bytes_per_s = bytes_per_s
        self._next = time.monotonic()  # when the uplink is free again, as reserved so far
        self._lock = threading.Lock()

    @property
    def chunk(self) -> int:
        """Bytes per send: a short slice of the budget (<= 1/64 s), so a relay passes bytes on promptly."""
        return max(16 * 1024, min(1024 * 1024, int(self.bytes_per_s / 64)))

    def take(self, n: int) -> None:
        """Block until ``n`` bytes may be sent (reserving them)."""
        with self._lock:
            now = time.monotonic()
            start = max(self._next, now)
            self._next = start + n / self.bytes_per_s
        if start > now:
            time.sleep(start - now)

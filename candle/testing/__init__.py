"""Helpers for tests, benchmarks and the offline demo: a Hub look-alike and tiny model stores."""

import socket


def free_port() -> int:
    """A loopback port nobody listens on right now (for test hubs, Serve's proxy, metrics)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

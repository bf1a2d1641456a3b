"""Records in the Ray cluster's GCS key-value store: the one place candle calls Ray's private
``internal_kv`` (Ray has no public API for it; tests/test_hf_internals.py checks it).

The GCS outlives every actor and its put-if-absent is atomic, so a record made here (the peer
secret, a branch's commit) is agreed by the whole cluster and survives any restart but the cluster's.
Plain puts, deletes and prefix scans serve records a process keeps up to date (a pool replica's models).
Every call is a blocking GCS round trip: run them off an event loop.
"""

from __future__ import annotations

from ray.experimental.internal_kv import (
    _internal_kv_del,
    _internal_kv_get,
    _internal_kv_initialized,
    _internal_kv_list,
    _internal_kv_put,
)

NAMESPACE = "candle"


def connected() -> bool:
    """Whether this process is in a Ray cluster (outside one there is nothing to agree with)."""
    return _internal_kv_initialized()


def get(key: str) -> bytes | None:
    return _internal_kv_get(key.encode(), namespace=NAMESPACE)


def put_if_absent(key: str, value: bytes) -> bytes:
    """Store ``value`` under ``key`` unless a value is there already; return the stored one."""
    _internal_kv_put(key.encode(), value, overwrite=False, namespace=NAMESPACE)
    stored = get(key)
    if stored is None:
        raise RuntimeError(f"the cluster's key-value store lost {key!r} just after it was written")
    return stored


def put(key: str, value: bytes) -> None:
    """Store ``value`` under ``key``, replacing what was there."""
    _internal_kv_put(key.encode(), value, overwrite=True, namespace=NAMESPACE)


def delete(key: str) -> None:
    _internal_kv_del(key.encode(), namespace=NAMESPACE)


def scan(prefix: str) -> dict[str, bytes]:
    """Every key starting with ``prefix`` and its value (a key deleted meanwhile is left out)."""
    found = {}
    for key in _internal_kv_list(prefix.encode(), namespace=NAMESPACE):
        value = _internal_kv_get(key, namespace=NAMESPACE)
        if value is not None:
            found[key.decode()] = value
    return found

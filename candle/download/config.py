"""What a fetch asks for, and how a node's downloader behaves (read from the environment once)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import TypedDict

from huggingface_hub import get_token

# Set on the replicas of a model that brings its own Ray runtime_env (placement.py), to the model's name:
# such a process never brings up node-wide actors, which would inherit its libraries (cluster.factory).
MODEL_RUNTIME_ENV_VAR = "CANDLE_MODEL_RUNTIME_ENV"


@dataclass(frozen=True)
class FetchRequest:
    """One model (or a subset of its files) to bring into a node's Hugging Face cache.

    ``cache_dir`` and ``endpoint`` default to what the node's environment says (``HF_HUB_CACHE``,
    ``HF_HOME``, ``HF_ENDPOINT``); ``token`` defaults to the node's ``HF_TOKEN`` or token file.
    """

    repo_id: str
    revision: str | None = None
    allow_patterns: tuple[str, ...] | None = None
    ignore_patterns: tuple[str, ...] | None = None
    repo_type: str = "model"
    cache_dir: str | None = None
    endpoint: str | None = None
    token: str | None = field(default=None, repr=False)

    @property
    def token_fingerprint(self) -> str:
        """Separates requests made with different credentials without keeping the token in a key."""
        return hashlib.sha256(self.token.encode()).hexdigest()[:16] if self.token else ""


class HubAccess(TypedDict):
    """Which hub to fetch from and with which token (``None``: the node's own settings)."""

    endpoint: str | None
    token: str | None


def caller_hub_access() -> HubAccess:
    """The hub settings of whoever runs the CLI or a job's driver, as ``hf download`` reads them.

    A mirror in the caller's ``HF_ENDPOINT`` or a token in ``HF_TOKEN`` (or the token file) must win
    over the environment the cluster's nodes were started with, or the fetch silently goes to
    another hub with other credentials.
    """
    return {"endpoint": os.environ.get("HF_ENDPOINT") or None, "token": get_token()}


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return value.strip().lower() in ("1", "true", "yes", "on") if value else default


@dataclass(frozen=True)
class DownloaderSettings:
    """Knobs of a node's download actor. Environment: ``CANDLE_DOWNLOAD_<FIELD>`` in upper case."""

    max_concurrent_files: int = 8
    # A blob larger than range_size is fetched as ranges of that size, up to connections_per_file at once
    # (from the hub, or spread over the peers that have it), within max_connections for the whole node.
    range_size: int = 16 * 1024 * 1024
    connections_per_file: int = 8
    max_connections: int = 16
    bandwidth: float = 0.0  # bytes/s cap on this node's total download, all connections together (0: none)
    peer_timeout: float = 1.0  # seconds a peer has to accept a connection and answer before it is dropped
    stall_timeout: float = 10.0  # seconds without a byte before a transfer is retried
    max_attempts: int = 5  # per file, for 5xx, dropped transfers and checksum mismatches
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    reserve_bytes: int = 0  # free space to leave on the cache's disk after a download
    chunk_size: int = 1024 * 1024  # bytes per write: the most a dropped connection loses, and progress granularity
    niceness: int = 10  # CPU priority of the actor's process, below replicas sharing the node
    # Cluster mode: one hub transfer per blob per cluster, other nodes copy from a peer.
    coordinate: bool = True
    shared_cache: bool = False  # HF_HOME on a network filesystem: one node downloads, the others wait
    takeover_after_s: float = 60.0  # a hub download that reports nothing this long is given to another node
    peer_bandwidth: float = 0.0  # bytes/s cap on this node's total upload to peers (0: none)
    relay: bool = True  # serve a blob to peers while it arrives (pipelined copies); off: store-and-forward
    peer_host: str = ""  # address the peer server binds and advertises (default: the node's Ray IP)
    # A transfer's file left by a dead writer is removed once unchanged this long (and its blob's lock free).
    orphan_age_s: float = 24 * 3600.0

    @classmethod
    def from_env(cls) -> DownloaderSettings:
        prefix = "CANDLE_DOWNLOAD_"
        return cls(
            max_concurrent_files=int(_env_float(prefix + "MAX_CONCURRENT_FILES", cls.max_concurrent_files)),
            range_size=int(_env_float(prefix + "RANGE_SIZE", cls.range_size)),
            connections_per_file=int(_env_float(prefix + "CONNECTIONS_PER_FILE", cls.connections_per_file)),
            max_connections=int(_env_float(prefix + "MAX_CONNECTIONS", cls.max_connections)),
            bandwidth=_env_float(prefix + "BANDWIDTH", cls.bandwidth),
            peer_timeout=_env_float(prefix + "PEER_TIMEOUT", cls.peer_timeout),
            stall_timeout=_env_float(prefix + "STALL_TIMEOUT", cls.stall_timeout),
            max_attempts=int(_env_float(prefix + "MAX_ATTEMPTS", cls.max_attempts)),
            backoff_base=_env_float(prefix + "BACKOFF_BASE", cls.backoff_base),
            backoff_max=_env_float(prefix + "BACKOFF_MAX", cls.backoff_max),
            reserve_bytes=int(_env_float(prefix + "RESERVE_BYTES", cls.reserve_bytes)),
            chunk_size=int(_env_float(prefix + "CHUNK_SIZE", cls.chunk_size)),
            niceness=int(_env_float(prefix + "NICENESS", cls.niceness)),
            coordinate=_env_bool(prefix + "COORDINATE", cls.coordinate),
            shared_cache=_env_bool(prefix + "SHARED_CACHE", cls.shared_cache),
            takeover_after_s=_env_float(prefix + "TAKEOVER_AFTER", cls.takeover_after_s),
            peer_bandwidth=_env_float(prefix + "PEER_BANDWIDTH", cls.peer_bandwidth),
            relay=_env_bool(prefix + "RELAY", cls.relay),
            peer_host=os.environ.get(prefix + "PEER_HOST", cls.peer_host),
            orphan_age_s=_env_float(prefix + "ORPHAN_AGE", cls.orphan_age_s),
        )

    def __post_init__(self) -> None:
        for name in ("max_concurrent_files", "range_size", "connections_per_file", "max_connections"):
            if getattr(self, name) < 1:
                raise ValueError(f"CANDLE_DOWNLOAD_{name.upper()} must be at least 1, got {getattr(self, name)}")

    def backoff(self, attempt: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2 ** max(0, attempt - 1))

"""The model catalog as data: what to fetch, which engine runs it, with what resources.

A catalog is YAML (``models: [...]``); users add a model by adding an entry, no code. The same
entries feed the deployments (what to fetch and load), the gateway (which ``model`` names exist
and where they live) and placement (the Serve options each deployment gets).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .capabilities import CAPABILITIES, REGISTRY, Capability, EngineKind

__all__ = ["CAPABILITIES", "Autoscaling", "Capability", "Catalog", "EngineKind", "Limits", "ModelSpec", "Resources"]

logger = logging.getLogger(__name__)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
# What a model's own Ray runtime_env may set: its libraries and environment. Where candle's code comes
# from (working_dir, py_modules) is the cluster's business: a model's entry must not swap it out.
RUNTIME_ENV_FIELDS = frozenset({"pip", "uv", "conda", "env_vars"})
# A runtime_env is shown by Ray's dashboard and `serve status`: no secret may ride in one. Replicas need
# none: the node's downloader fetches with the node's HF_TOKEN.
_SECRET_NAME = re.compile(r"(?:^|_)(?:TOKEN|KEY|SECRET|PASSWORD|PASSWD|CREDENTIALS)$", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"://[^/\s@]+@")
_warned_unpinned: set[tuple[str, str, str | None]] = set()


class Strict(BaseModel):
    # Errors name the field and say what is wrong, never echo the value: it may be a secret.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class Resources(Strict):
    """What one replica needs, and where it may land."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None
    # Ray node labels the replica's node must carry, e.g. {"candle.io/node-class": "multi-gpu"}.
    label_selector: dict[str, str] = Field(default_factory=dict)
    # vLLM tensor parallelism: one bundle of one GPU per rank, packed on one node.
    tensor_parallel_size: int = Field(default=1, ge=1)
    # vLLM pipeline parallelism: this many stages of ``tensor_parallel_size`` ranks each, which may
    # span nodes (one stage per node when each node has a stage's GPUs free), for engines bigger than a node.
    pipeline_parallel_size: int = Field(default=1, ge=1)

    @property
    def ranks(self) -> int:
        """GPU workers of a parallel engine: one per tensor-parallel rank of each pipeline stage."""
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @model_validator(mode="after")
    def _gpus_cover_the_ranks(self) -> Resources:
        if self.ranks > 1 and self.num_gpus != self.ranks:
            raise ValueError(
                f"num_gpus ({self.num_gpus:g}) must be tensor_parallel_size x pipeline_parallel_size ({self.ranks})"
            )
        return self


class Limits(Strict):
    """Per-request bounds the gateway enforces before a request reaches the model, and how long a
    request may queue for it (``candle.placement.max_queued_requests`` derives the queue from these)."""

    max_tokens: int = 4096
    max_n: int = 4
    max_input_items: int = 256
    max_input_chars: int = 100_000
    max_image_pixels: int = 4096 * 4096
    max_images_per_request: int = 8
    # How long a request may wait for a free slot of the model before the gateway answers 503 instead.
    queue_latency_budget_s: float = Field(default=10.0, gt=0)
    # Seconds a typical request holds one of a replica's ``max_ongoing_requests`` slots when all are busy.
    request_time_s: float = Field(default=1.0, gt=0)
    # How long a request to a model scaled to zero waits for a replica to start before a 503.
    cold_start_timeout_s: float = Field(default=120.0, gt=0)


class Autoscaling(Strict):
    """Serve autoscaling: replicas follow the load, down to none when ``min_replicas`` is 0 (idle)."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    downscale_delay_s: float = Field(default=600.0, ge=0)
    # The window Serve averages ongoing requests over: a model goes idle only once a whole window
    # saw none, so this plus the downscale delay is the least time from the last request to idle.
    look_back_period_s: float = Field(default=30.0, gt=0)
    # How often replicas and callers report their load to Serve; shorter than the window it fills.
    metrics_interval_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas ({self.max_replicas}) is below min_replicas ({self.min_replicas})")
        if self.look_back_period_s <= self.metrics_interval_s:
            raise ValueError(
                f"look_back_period_s ({self.look_back_period_s:g}) must be longer than "
                f"metrics_interval_s ({self.metrics_interval_s:g}), the window must hold a report"
            )
        return self


class ModelSpec(Strict):
    """One servable model. ``name`` is the OpenAI ``model`` id clients send."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
    capability: Capability
    repo_id: str
    revision: str | None = None
    allow_patterns: tuple[str, ...] | None = None
    ignore_patterns: tuple[str, ...] | None = None
    trust_remote_code: bool = False
    gated: bool = False
    # "auto": vLLM for text-to-text and vision when the replica has GPUs, the CPU engine otherwise.
    engine: EngineKind = "auto"
    engine_args: dict[str, Any] = Field(default_factory=dict)
    # Instructions by role, e.g. {"query": "Instruct: Given a query, retrieve passages\nQuery: "}.
    prompts: dict[str, str] = Field(default_factory=dict)
    # Request defaults, e.g. {"num_inference_steps": 4, "guidance_scale": 0.0, "max_tokens": 256}.
    defaults: dict[str, Any] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)
    resources: Resources = Field(default_factory=Resources)
    # A Ray runtime_env for this model's application only, e.g. {"pip": ["transformers==4.42.4"]} for
    # remote code written against other library versions, or {"env_vars": {...}}. A pip env extends the
    # node's Python environment (Ray clones it), so candle stays importable in the replica.
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    num_replicas: int = 1
    # Replaces num_replicas (which must then stay at its default, 1): Serve sizes the deployment.
    autoscaling: Autoscaling | None = None
    max_ongoing_requests: int = 16
    description: str = ""

    def scales_to_zero(self) -> bool:
        """Whether Serve may take every replica away (``autoscaling.min_replicas`` 0): idle, not failed."""
        return self.autoscaling is not None and self.autoscaling.min_replicas == 0

    def fetch_allow_patterns(self) -> tuple[str, ...] | None:
        """What to download: with ``trust_remote_code`` the repo's code files are always included."""
        if self.allow_patterns is None or not self.trust_remote_code or "*.py" in self.allow_patterns:
            return self.allow_patterns
        return (*self.allow_patterns, "*.py")

    def unpinned_remote_code(self) -> str | None:
        """Why running this entry's repo code is not reproducible, when it names a branch, not a commit."""
        if not self.trust_remote_code or (self.revision and COMMIT.match(self.revision)):
            return None
        return (
            f"{self.name}: trust_remote_code runs the code of {self.repo_id} at branch {self.revision or 'main'!r}, "
            "not a commit: pin `revision` to a 40-hex commit (until then the cluster keeps the commit its first "
            "fetch resolved, and a new cluster may run other code)"
        )

    @field_validator("runtime_env")
    @classmethod
    def _model_runtime_env(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - RUNTIME_ENV_FIELDS)
        if unknown:
            raise ValueError(f"runtime_env may set {', '.join(sorted(RUNTIME_ENV_FIELDS))}, not {', '.join(unknown)}")
        for name in value.get("env_vars", {}):
            if _SECRET_NAME.search(name):
                raise ValueError(
                    f"runtime_env env_vars.{name} looks like a secret, and Ray shows a runtime_env on its "
                    "dashboard: set it in the nodes' environment instead"
                )
        for field in ("pip", "uv", "conda"):
            if any(_URL_CREDENTIALS.search(text) for text in _strings(value.get(field))):
                raise ValueError(
                    f"runtime_env {field} has a URL with credentials, and Ray shows a runtime_env on its "
                    "dashboard: configure the package index on the nodes (pip.conf, UV_INDEX_URL) instead"
                )
        return value

    @field_validator("allow_patterns", "ignore_patterns", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _engine_serves_capability(self) -> ModelSpec:
        """Refuse at load what would otherwise fail on the first request (e.g. a text-embedding entry
        on the transformers chat engine)."""
        engines = REGISTRY[self.capability].engines
        if self.engine != "auto" and self.engine not in engines:
            raise ValueError(
                f"{self.name}: engine {self.engine!r} cannot serve {self.capability} "
                f"(engines for it: auto, {', '.join(engines)})"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_size(self) -> ModelSpec:
        if self.autoscaling is not None and self.num_replicas != 1:
            raise ValueError(f"{self.name}: set num_replicas or autoscaling, not both")
        return self


class Catalog(Strict):
    models: tuple[ModelSpec, ...]

    @model_validator(mode="before")
    @classmethod
    def _drop_extension_keys(cls, data: object) -> object:
        """Top-level ``x-...`` keys hold YAML anchors shared by entries (as in compose files)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not str(k).startswith("x-")}
        return data

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: tuple[ModelSpec, ...]) -> tuple[ModelSpec, ...]:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique, repeated: {', '.join(duplicates)}")
        return models

    @model_validator(mode="after")
    def _warn_unpinned_remote_code(self) -> Catalog:
        """Loudly, once per process and entry: remote code from a moving branch."""
        for model in self.models:
            key = (model.name, model.repo_id, model.revision)
            warning = model.unpinned_remote_code()
            if warning and key not in _warned_unpinned:
                _warned_unpinned.add(key)
                logger.warning("%s", warning)
        return self

    def get(self, name: str) -> ModelSpec | None:
        return next((m for m in self.models if m.name == name), None)

    def for_capability(self, capability: Capability) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.capability == capability)

    def select(self, names: list[str] | None) -> Catalog:
        """The named subset (all when ``names`` is None); unknown names are an error, not a silent skip."""
        if names is None:
            return self
        unknown = [n for n in names if self.get(n) is None]
        if unknown:
            raise ValueError(f"unknown models {unknown}; the catalog has {[m.name for m in self.models]}")
        return Catalog(models=tuple(m for m in self.models if m.name in names))


def _strings(value: object) -> Iterator[str]:
    """Every string in a parsed YAML value (a runtime_env field: a list, a mapping or a path)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)

"""The model catalog as data: what to fetch, which engine runs it, with what resources.

A catalog is YAML (``models: [...]``); users add a model by adding an entry, no code. The same
entries feed the deployments (what to fetch and load), the gateway (which ``model`` names exist
and where they live) and placement (the Serve options each deployment gets).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .capabilities import CAPABILITIES, REGISTRY, Capability, EngineKind, poolable
from .secrets import is_secret_name, secret_in_value

__all__ = [
    "CAPABILITIES",
    "Autoscaling",
    "Capability",
    "Catalog",
    "Deployable",
    "EngineKind",
    "Limits",
    "ModelSpec",
    "Pool",
    "Resources",
]

logger = logging.getLogger(__name__)

COMMIT = re.compile(r"^[0-9a-f]{40}$")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")
# The most prompts or inputs one request may carry, whatever a model's limits say: OpenAI's cap on
# embedding inputs; the API refuses more before it validates any (candle.api.schemas).
MAX_INPUT_ITEMS = 2048
# What a model's own Ray runtime_env may set: its libraries and environment. Where candle's code comes
# from (working_dir, py_modules) is the cluster's business: a model's entry must not swap it out.
RUNTIME_ENV_FIELDS = frozenset({"pip", "uv", "conda", "env_vars"})
_SHOWN_BY_RAY = "and Ray shows a runtime_env on its dashboard: set it in the nodes' environment instead"
_warned_unpinned: set[tuple[str, str, str | None]] = set()


class Strict(BaseModel):
    # Errors name the field and say what is wrong, never echo the value: it may be a secret.
    # A docstring under a field is its description: docs/catalog.md is generated from them.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True, use_attribute_docstrings=True)


class Resources(Strict):
    """What one replica needs, and where it may land."""

    num_cpus: float = 1.0
    """CPUs Ray books for each replica."""
    num_gpus: float = 0.0
    """GPUs for each replica (a fraction shares one); with parallel ranks, one per rank. A replica that
    books none runs on the CPU even on a GPU node."""
    memory_gb: float | None = None
    """Memory Ray books for each replica, in GB (none: unbooked)."""
    cpu_threads: int | None = Field(default=None, ge=1)
    """torch threads of a replica that runs on the CPU (none: Ray's ``OMP_NUM_THREADS``, ``num_cpus``
    rounded down, at least 1, so a replica booking a fraction of a core computes on one thread). More
    than ``num_cpus`` lets a model use cores that neighbours book but leave idle."""
    label_selector: dict[str, str] = Field(default_factory=dict)
    """Ray node labels the replica's node must carry, e.g. ``{"candle.io/node-class": "multi-gpu"}``."""
    tensor_parallel_size: int = Field(default=1, ge=1)
    """vLLM tensor parallelism: one bundle of one GPU per rank, packed on one node."""
    pipeline_parallel_size: int = Field(default=1, ge=1)
    """vLLM pipeline parallelism: this many stages of ``tensor_parallel_size`` ranks each, which may
    span nodes (one stage per node when each node has a stage's GPUs free), for engines bigger than a
    node."""

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
    """The most tokens a request may ask to generate (``max_tokens``, ``max_completion_tokens``)."""
    max_n: int = 4
    """The most answers (or images) one request may ask for (``n``)."""
    max_input_items: int = Field(default=256, ge=1, le=MAX_INPUT_ITEMS)
    """The most inputs in one request: embedding inputs, completion prompts, rerank documents and score
    pairs."""
    max_input_chars: int = 100_000
    """Every character a model reads in one request: prompts, message text, names, tool definitions
    and tool-call arguments, image prompts, embedding inputs, rerank documents and their query (once per
    document: a cross-encoder reads it with each)."""
    max_image_pixels: int = 4096 * 4096
    """The most pixels of an image sent to the model, and of one it generates."""
    max_images_per_request: int = 8
    """The most images in one request (vision messages, image-embedding inputs)."""
    queue_latency_budget_s: float = Field(default=10.0, gt=0)
    """How long a request may wait for a free slot of the model before the gateway answers 503 instead."""
    request_time_s: float = Field(default=1.0, gt=0)
    """Seconds a typical request holds one of a replica's ``max_ongoing_requests`` slots when all are busy."""
    cold_start_timeout_s: float = Field(default=120.0, gt=0)
    """How long a request to a model scaled to zero waits for a replica to start (to a pooled model
    loaded nowhere: for its load) before a 503 with ``Retry-After``."""
    max_schema_bytes: int = Field(default=32_768, ge=1)
    """Structured outputs: the serialized bytes of one JSON schema a request decodes by (its
    ``response_format``'s, and the tools' parameters that vLLM compiles). Schemas become grammars
    first, and xgrammar can take minutes over a small one (2,000 optional properties took 156 s): the
    gateway bounds them for every engine."""
    max_schema_depth: int = Field(default=32, ge=1)
    """The deepest nesting of one such schema."""
    max_schema_properties: int = Field(default=512, ge=0)
    """Object properties over all the request's schemas."""
    max_schema_pattern_repeats: int = Field(default=1024, ge=0)
    """The counts of counted repetitions (``{n}``, ``{m,n}``) in the schemas' patterns, added up."""
    schema_compile_timeout_s: float = Field(default=10.0, gt=0)
    """How long the transformers engines let a new schema compile (in a process stopped past it, with a
    400 naming this limit); vLLM compiles in its own process."""


class Autoscaling(Strict):
    """Serve autoscaling: replicas follow the load, down to none when ``min_replicas`` is 0 (idle)."""

    min_replicas: int = Field(default=1, ge=0)
    """The fewest replicas; 0 lets the model go idle (a request wakes it from the node's cache)."""
    max_replicas: int = Field(default=1, ge=1)
    """The most replicas."""
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    """Ongoing requests per replica that Serve sizes the deployment for."""
    downscale_delay_s: float = Field(default=600.0, ge=0)
    """How long load must stay low before Serve removes a replica."""
    look_back_period_s: float = Field(default=30.0, gt=0)
    """The window Serve averages ongoing requests over: a model goes idle only once a whole window saw
    none, so this plus the downscale delay is the least time from the last request to idle."""
    metrics_interval_s: float = Field(default=10.0, gt=0)
    """How often replicas and callers report their load to Serve; shorter than the window it fills."""

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


class Deployable(Protocol):
    """What becomes one Serve deployment: a model's own or a pool's (``candle.placement`` reads it)."""

    @property
    def name(self) -> str: ...
    @property
    def resources(self) -> Resources: ...
    @property
    def runtime_env(self) -> dict[str, Any]: ...
    @property
    def num_replicas(self) -> int: ...
    @property
    def autoscaling(self) -> Autoscaling | None: ...
    @property
    def max_ongoing_requests(self) -> int: ...
    def queue_budget(self) -> tuple[float, float]:
        """How long a request may queue, and how long one holds a busy replica's slot (seconds)."""
        ...


# What a pool decides for every model that joins it; an entry in a pool leaves these at their defaults.
POOL_FIELDS = ("resources", "num_replicas", "autoscaling", "runtime_env", "max_ongoing_requests")


class Pool(Strict):
    """A warm pool (``pools: {NAME: ...}``): one Serve deployment whose replicas keep their libraries
    imported and load the models that join it (``pool: NAME`` on an entry) on their first request,
    from the node's verified cache, and unload them when idle. A request to a pooled model that no
    replica holds waits for the load (bounded by the entry's ``limits.cold_start_timeout_s``)."""

    name: str = Field(default="", pattern=r"^$|" + NAME_PATTERN)
    """The pool's key under ``pools``, filled in from it: the name of its Serve application."""
    resources: Resources = Field(default_factory=Resources)
    """What each pool replica needs and where it may land. ``memory_gb`` also bounds the models one
    replica holds at once, by their estimated sizes (their weights at the dtype they load in): room
    for a new one is made by unloading the least recently used; a model larger than it alone is
    refused. Book the libraries' own memory (about 1 GB on CPU) on top."""
    num_replicas: int = 1
    """Replicas of the pool's deployment."""
    autoscaling: Autoscaling | None = None
    """Replaces ``num_replicas`` (see Autoscaling); with ``min_replicas: 0`` the pool itself scales to
    zero, and a request then waits for a new replica process as well as the load."""
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    """A Ray runtime_env for the pool's replicas (as an entry's ``runtime_env``)."""
    max_ongoing_requests: int = 16
    """Requests one pool replica works on at once, over all its models."""
    max_models_per_replica: int = Field(default=3, ge=1)
    """The most models one replica holds at once; a load past it unloads the least recently used."""
    idle_after_s: float = Field(default=600.0, gt=0)
    """A model that has had no request for this long is unloaded from the replica holding it, and
    its memory freed; the next request loads it again from the node's cache."""
    queue_latency_budget_s: float = Field(default=10.0, gt=0)
    """The pool's queue: how long a request may wait for a free slot of its replicas before a 503."""
    request_time_s: float = Field(default=1.0, gt=0)
    """Seconds a typical request of the pool's models holds a slot of a full replica."""

    @field_validator("runtime_env")
    @classmethod
    def _pool_runtime_env(cls, value: dict[str, Any]) -> dict[str, Any]:
        return checked_runtime_env(value)

    def queue_budget(self) -> tuple[float, float]:
        return self.queue_latency_budget_s, self.request_time_s

    @model_validator(mode="after")
    def _one_process(self) -> Pool:
        if self.resources.ranks > 1:
            raise ValueError(
                f"pools.{self.name}: a pool replica is one process: tensor_parallel_size and "
                "pipeline_parallel_size must stay 1"
            )
        one_way_to_size(f"pools.{self.name}", self.num_replicas, self.autoscaling)
        return self


class ModelSpec(Strict):
    """One servable model. ``name`` is the OpenAI ``model`` id clients send."""

    name: str = Field(pattern=NAME_PATTERN)
    """The OpenAI ``model`` id clients send, and the name of the model's Serve application."""
    capability: Capability
    """What the model does; it decides the routes, the engines and the replica class."""
    repo_id: str
    """The Hugging Face repo the weights come from (``owner/name``)."""
    revision: str | None = None
    """A commit (40 hex) or a branch or tag (none: ``main``). A branch resolves once per cluster: the
    commit the first fetch got is recorded cluster-wide and every node and later replica keeps it."""
    allow_patterns: tuple[str, ...] | None = None
    """Which files to fetch (glob patterns, as ``hf download --include``); none: every file. A pattern
    without wildcards names a file, which must exist."""
    ignore_patterns: tuple[str, ...] | None = None
    """Files not to fetch (glob patterns, as ``hf download --exclude``)."""
    trust_remote_code: bool = False
    """Run the repo's own modelling code: its ``*.py`` files are always fetched, and so are those of
    every repo its config's ``auto_map`` names as ``owner/name--module.Class``. Name a commit in
    ``revision`` (a branch logs a loud warning at load)."""
    code_revisions: dict[str, str] = Field(default_factory=dict)
    """The commit to fetch and run each code repo at, for code an ``auto_map`` names in another repo
    (``owner/name--module.Class``), e.g. ``{"jinaai/jina-bert-implementation": "<40-hex commit>"}``. A
    repo left out runs at the commit its default branch first resolved to in the cluster (a warning
    says so)."""
    gated: bool = False
    """The repo needs an accepted licence: the nodes' ``HF_TOKEN`` must have access."""
    engine: EngineKind = "auto"
    """Which engine runs the model. ``auto``: vLLM for text-to-text and vision when the replica has
    GPUs, the CPU engine otherwise; ``vllm`` also on CPU nodes with vLLM's CPU build."""
    engine_args: dict[str, Any] = Field(default_factory=dict)
    """Passed to the engine: vLLM's engine arguments (``tool_call_parser``, ``reasoning_parser``,
    ``max_model_len``...), sentence-transformers' (``config_kwargs``, ``model_kwargs``; for rerankers
    ``CrossEncoder``'s, e.g. ``default_prompt_name``, or ``processor_kwargs: {chat_template: ...}`` for
    an LLM reranker whose repo has no template for query/document pairs) plus candle's ``append_eos``."""
    prompts: dict[str, str] = Field(default_factory=dict)
    """Instructions by role, applied with the request's ``input_type``, e.g. ``{"query": "Instruct:
    Given a query, retrieve passages\nQuery: "}``; for rerankers, by a rerank or score request's
    ``prompt_name`` (prepended to the query; an LLM reranker's instruction)."""
    defaults: dict[str, Any] = Field(default_factory=dict)
    """Request defaults, e.g. ``{"num_inference_steps": 4, "guidance_scale": 0.0, "max_tokens": 256}``
    (rerankers: ``max_tokens_per_doc``)."""
    limits: Limits = Field(default_factory=Limits)
    """Per-request bounds (see Limits)."""
    resources: Resources = Field(default_factory=Resources)
    """What each replica needs and where it may land (see Resources)."""
    runtime_env: dict[str, Any] = Field(default_factory=dict)
    """A Ray runtime_env for this model's application only (``pip``, ``uv``, ``conda``, ``env_vars``),
    e.g. ``{"pip": ["transformers==4.42.4"]}`` for remote code written against other library
    versions. A pip env extends the node's Python environment (Ray clones it), so candle stays
    importable in the replica. Ray shows it on its dashboard: no secrets."""
    num_replicas: int = 1
    """Replicas of the model's deployment."""
    autoscaling: Autoscaling | None = None
    """Replaces ``num_replicas`` (which must then stay at its default, 1): Serve sizes the deployment
    with the load (see Autoscaling)."""
    max_ongoing_requests: int = 16
    """Requests one replica works on at once (Serve's ``max_ongoing_requests``)."""
    stream_interval_ms: float = Field(default=50, ge=0, le=1000)
    """Chat models: after the first token, a streamed answer's pieces that come within this long of the
    last message are sent together (one Serve message and one SSE event), which spares the replica and
    the gateway a hop per token; the first token and the last piece are never held. ``0`` sends every
    piece as the engine makes it. Ray Serve LLM's ``stream_batching_interval_ms`` does the same (50)."""
    sleep_after_s: float | None = Field(default=None, gt=0)
    """vLLM on GPUs: after this long without requests the engine sleeps (vLLM's sleep mode, level 1:
    weights to host memory, KV cache freed, GPU memory released) and the next request wakes it (0.1-6
    s from 0.6B to 235B parameters by vLLM's numbers) instead of a new replica loading (30-100+ s). For
    models too big to scale to zero; vLLM supports it on CUDA and ROCm only, and the replica then
    refuses to start elsewhere."""
    pool: str | None = None
    """The warm pool (a name under the catalog's ``pools``) this model joins instead of a deployment of
    its own: it then takes the pool's ``resources``, replicas, ``runtime_env`` and
    ``max_ongoing_requests`` (leave them unset here), and is loaded on its first request."""
    description: str = ""
    """Free text for operators."""

    def queue_budget(self) -> tuple[float, float]:
        return self.limits.queue_latency_budget_s, self.limits.request_time_s

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

    @field_validator("code_revisions")
    @classmethod
    def _code_commits(cls, value: dict[str, str]) -> dict[str, str]:
        for repo, commit in value.items():
            if not _REPO_ID.match(repo):
                raise ValueError(f"code_revisions: {repo!r} is not a repo id (owner/name)")
            if not COMMIT.match(commit):
                raise ValueError(f"code_revisions.{repo} must be a 40-hex commit")
        return value

    @field_validator("runtime_env")
    @classmethod
    def _model_runtime_env(cls, value: dict[str, Any]) -> dict[str, Any]:
        return checked_runtime_env(value)

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
    def _sleep_needs_vllm(self) -> ModelSpec:
        if self.sleep_after_s is not None and (
            "vllm" not in REGISTRY[self.capability].engines or self.engine not in ("auto", "vllm")
        ):
            raise ValueError(f"{self.name}: sleep_after_s is vLLM's sleep mode: it needs engine auto or vllm")
        if self.sleep_after_s is not None and self.pool is not None:
            raise ValueError(f"{self.name}: sleep_after_s and pool: a pool unloads idle models itself (idle_after_s)")
        return self

    @model_validator(mode="after")
    def _interval_needs_streams(self) -> ModelSpec:
        # Compared with the default, not looked up in model_fields_set: replicas get the entry dumped whole.
        default = type(self).model_fields["stream_interval_ms"].default
        if self.stream_interval_ms != default and self.capability not in ("text-to-text", "vision"):
            raise ValueError(f"{self.name}: stream_interval_ms paces streamed answers: {self.capability} streams none")
        return self

    @model_validator(mode="after")
    def _code_needs_trust(self) -> ModelSpec:
        if self.code_revisions and not self.trust_remote_code:
            raise ValueError(f"{self.name}: code_revisions without trust_remote_code: no repo code runs")
        return self

    @model_validator(mode="after")
    def _one_way_to_size(self) -> ModelSpec:
        one_way_to_size(self.name, self.num_replicas, self.autoscaling)
        return self


class Catalog(Strict):
    pools: dict[str, Pool] = Field(default_factory=dict)
    """Warm pools by name (see Pool): an entry joins one with ``pool: NAME``; each holds at least one."""
    models: tuple[ModelSpec, ...]
    """The entries; names are unique."""

    @model_validator(mode="before")
    @classmethod
    def _drop_extension_keys(cls, data: object) -> object:
        """Top-level ``x-...`` keys hold YAML anchors shared by entries (as in compose files)."""
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not str(k).startswith("x-")}
        return data

    @field_validator("pools", mode="before")
    @classmethod
    def _named_by_key(cls, pools: object) -> object:
        """A pool's name is its key; a ``name`` written inside it must agree."""
        if not isinstance(pools, dict):
            return pools
        named = {}
        for key, pool in pools.items():
            if isinstance(pool, dict):
                if pool.get("name", key) != key:
                    raise ValueError(f"pools.{key}: name is the pool's key, not {pool['name']!r}")
                pool = {**pool, "name": key}
            named[key] = pool
        return named

    @field_validator("models")
    @classmethod
    def _unique_names(cls, models: tuple[ModelSpec, ...], info: ValidationInfo) -> tuple[ModelSpec, ...]:
        names = [m.name for m in models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"model names must be unique, repeated: {', '.join(duplicates)}")
        return _joined_to_pools(models, info.data.get("pools") or {})

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
        models = tuple(m for m in self.models if m.name in names)
        return Catalog(models=models, pools={m.pool: self.pools[m.pool] for m in models if m.pool})

    def pool_members(self, pool: str) -> tuple[ModelSpec, ...]:
        return tuple(m for m in self.models if m.pool == pool)


def _joined_to_pools(models: tuple[ModelSpec, ...], pools: dict[str, Pool]) -> tuple[ModelSpec, ...]:
    """``models`` with each pooled entry taking its pool's deployment fields (``POOL_FIELDS``), so what
    reads an entry's resources (placement, the prefetch and batch jobs) sees the replicas that serve it.

    Refused: a pool nobody joins or named like a model (both are Serve applications), an entry joining
    an undeclared pool, an engine that cannot load and unload in a shared process (vLLM), and an entry
    that sets a field its pool decides (to anything but the pool's value).
    """
    names = {m.name for m in models}
    if clashes := sorted(names & set(pools)):
        raise ValueError(f"pools {', '.join(clashes)}: named like a model; each is a Serve application of that name")
    if unused := sorted(set(pools) - {m.pool for m in models}):
        raise ValueError(f"pools {', '.join(unused)}: no model joins them (`pool: NAME` on an entry)")
    joined = []
    for model in models:
        if model.pool is None:
            joined.append(model)
            continue
        pool = pools.get(model.pool)
        if pool is None:
            declared = ", ".join(sorted(pools)) or "none"
            raise ValueError(f"{model.name}: pool {model.pool!r} is not declared under pools (declared: {declared})")
        info = REGISTRY[model.capability]
        engine = (
            model.engine if model.engine != "auto" else info.gpu_engine if pool.resources.num_gpus else info.cpu_engine
        )
        if not poolable(model.capability, engine):
            allowed = ", ".join(info.pool_engines) or "none"
            picked = " (what `auto` picks on the pool's GPUs)" if model.engine == "auto" else ""
            raise ValueError(
                f"{model.name}: engine {engine!r}{picked} cannot join pool {model.pool!r}: it cannot load and "
                f"unload models in a shared process (pooled {model.capability} engines: {allowed}); give the "
                "model a deployment of its own (autoscaling.min_replicas: 0 lets it scale to zero)"
            )
        for field in POOL_FIELDS:
            value = getattr(model, field)
            if value != getattr(pool, field) and value != ModelSpec.model_fields[field].get_default(
                call_default_factory=True
            ):
                raise ValueError(f"{model.name}: {field} is decided by its pool: set it under pools.{model.pool}")
        joined.append(model.model_copy(update={field: getattr(pool, field) for field in POOL_FIELDS}))
    return tuple(joined)


def one_way_to_size(owner: str, num_replicas: int, autoscaling: Autoscaling | None) -> None:
    if autoscaling is not None and num_replicas != 1:
        raise ValueError(f"{owner}: set num_replicas or autoscaling, not both")


def checked_runtime_env(value: dict[str, Any]) -> dict[str, Any]:
    """A model's or a pool's ``runtime_env``: only its libraries and environment, and no secret."""
    unknown = sorted(set(value) - RUNTIME_ENV_FIELDS)
    if unknown:
        raise ValueError(f"runtime_env may set {', '.join(sorted(RUNTIME_ENV_FIELDS))}, not {', '.join(unknown)}")
    # A runtime_env is shown by Ray's dashboard and `serve status`: no secret may ride in one. Replicas
    # need none: the node's downloader fetches with the node's HF_TOKEN.
    for name, setting in (value.get("env_vars") or {}).items():
        where = f"env_vars.{name}"
        if is_secret_name(str(name)):
            raise ValueError(f"runtime_env {where} looks like a secret, {_SHOWN_BY_RAY}")
        if kind := next(filter(None, map(secret_in_value, _strings(setting))), None):
            raise ValueError(f"runtime_env {where} holds {kind}, {_SHOWN_BY_RAY}")
    for field in ("pip", "uv", "conda"):
        if kind := next(filter(None, map(secret_in_value, _strings(value.get(field)))), None):
            raise ValueError(f"runtime_env {field} holds {kind}, {_SHOWN_BY_RAY} (pip.conf, UV_INDEX_URL, .netrc)")
    return value


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

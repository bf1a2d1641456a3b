"""The one registry of what candle can serve: per capability, its engines, its Serve deployment and
the routes that reach it.

The catalog schema checks entries against it, ``load_engine`` picks and imports engines from it,
the app builders make each capability's deployment from it and the gateway routes with it. Engine
and replica classes are named by import path, so this low layer imports neither torch nor Serve.
Adding a capability starts here (see docs/layout.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Literal

from candle.contracts import ChatEngine, CompletionEngine, EmbeddingEngine, ImageEngine, RerankEngine

Capability = Literal["text-to-text", "text-embedding", "rerank", "text-to-image", "image-embedding", "vision"]
EngineKind = Literal["auto", "vllm", "transformers", "sentence-transformers", "diffusers", "clip"]


@dataclass(frozen=True)
class CapabilityInfo:
    deployment: str  # the Serve deployment's name inside each model's application
    replica: str  # "module:Class" of the replica class that deployment runs
    routes: tuple[str, ...]  # OpenAI routes that accept models of this capability
    engines: dict[str, str]  # engine kind -> "module:Class"
    cpu_engine: str  # what `engine: auto` picks on a replica without GPUs
    gpu_engine: str  # ... and with GPUs
    protocol: type  # what every engine of the capability implements (candle.contracts)
    # Engines that load and unload a model inside one process, so its models may join a warm pool
    # (``pools`` in a catalog). vLLM cannot: its engine is processes of its own and owns the GPU memory.
    pool_engines: tuple[str, ...] = ()
    # "module:Class" of the replica class that also answers HTTP at the model's own base URL
    # (``/models/NAME/v1``), for a model with an app of its own; None: the gateway's ``/v1`` only.
    ingress: str | None = None


_VLLM = "candle.engines.chat.vllm:VLLMEngine"

REGISTRY: dict[Capability, CapabilityInfo] = {
    "text-to-text": CapabilityInfo(
        deployment="TextGeneration",
        replica="deployments.replicas.chat:ChatReplica",
        ingress="deployments.replicas.chat_ingress:ChatIngress",
        routes=("/v1/chat/completions", "/v1/completions"),
        engines={"transformers": "candle.engines.chat.transformers:TransformersTextEngine", "vllm": _VLLM},
        cpu_engine="transformers",
        gpu_engine="vllm",
        protocol=CompletionEngine,
        pool_engines=("transformers",),
    ),
    "vision": CapabilityInfo(
        deployment="VisionChat",
        replica="deployments.replicas.chat:ChatReplica",
        ingress="deployments.replicas.chat_ingress:ChatIngress",
        routes=("/v1/chat/completions",),
        engines={"transformers": "candle.engines.vision.transformers:LlavaEngine", "vllm": _VLLM},
        cpu_engine="transformers",
        gpu_engine="vllm",
        protocol=ChatEngine,
        pool_engines=("transformers",),
    ),
    "text-embedding": CapabilityInfo(
        deployment="TextEmbedding",
        replica="deployments.replicas.embedding:EmbeddingReplica",
        routes=("/v1/embeddings",),
        engines={"sentence-transformers": "candle.engines.embedding.sentence_transformers:SentenceEmbeddingEngine"},
        cpu_engine="sentence-transformers",
        gpu_engine="sentence-transformers",
        protocol=EmbeddingEngine,
        pool_engines=("sentence-transformers",),
    ),
    "rerank": CapabilityInfo(
        deployment="Rerank",
        replica="deployments.replicas.rerank:RerankReplica",
        routes=("/v1/rerank", "/v1/score"),
        engines={"sentence-transformers": "candle.engines.rerank.sentence_transformers:CrossEncoderEngine"},
        cpu_engine="sentence-transformers",
        gpu_engine="sentence-transformers",
        protocol=RerankEngine,
        pool_engines=("sentence-transformers",),
    ),
    "image-embedding": CapabilityInfo(
        deployment="ImageEmbedding",
        replica="deployments.replicas.embedding:EmbeddingReplica",
        routes=("/v1/embeddings",),
        engines={"clip": "candle.engines.image_embedding.clip:ClipEngine"},
        cpu_engine="clip",
        gpu_engine="clip",
        protocol=EmbeddingEngine,
        pool_engines=("clip",),
    ),
    "text-to-image": CapabilityInfo(
        deployment="ImageGeneration",
        replica="deployments.replicas.image_generation:ImageGenerationReplica",
        routes=("/v1/images/generations",),
        engines={"diffusers": "candle.engines.image_generation.diffusers:DiffusionEngine"},
        cpu_engine="diffusers",
        gpu_engine="diffusers",
        protocol=ImageEngine,
        pool_engines=("diffusers",),
    ),
}
CAPABILITIES: tuple[Capability, ...] = tuple(REGISTRY)


def capabilities_for(route: str) -> tuple[Capability, ...]:
    """The capabilities whose models ``route`` serves."""
    return tuple(name for name, info in REGISTRY.items() if route in info.routes)


def poolable(capability: Capability, engine: str) -> bool:
    """Whether a model of ``capability`` run by ``engine`` (a kind, not ``auto``) can join a warm pool."""
    return engine in REGISTRY[capability].pool_engines


def resolve(path: str) -> Any:
    """The object a ``"module:Name"`` path of the registry names (imported on first use)."""
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)

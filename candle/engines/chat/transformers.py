"""Text-to-text on CPU (and small GPUs without vLLM): transformers, with chat templates and streaming."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

from transformers import AutoModelForCausalLM, AutoTokenizer, BatchEncoding

from candle.catalog import ModelSpec
from candle.contracts import ChatCall, CompletionCall, StreamKind, TextChunk

from ..device import load_model
from ..errors import InvalidInput
from .generation import stream_generate
from .grammar import Grammars


class TransformersTextEngine:
    """A causal LM loaded from a local snapshot folder."""

    streams: ClassVar[StreamKind] = "sync"

    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
        self.model = load_model(AutoModelForCausalLM, folder, spec, trust_remote_code=spec.trust_remote_code)
        self._lock = threading.Lock()
        self.grammars = Grammars(self.model, self.tokenizer, spec.limits.schema_compile_timeout_s)

    # Generators: the template and the grammar (which may compile for seconds) are made where the
    # stream is first read, the replica's worker thread, never its event loop.

    def chat(self, call: ChatCall) -> Iterator[TextChunk]:
        if call.images:
            raise InvalidInput("this model reads text only; send images to a vision model")
        tools: list[dict[Any, Any] | Callable[..., Any]] | None = list(call.tools) if call.tools is not None else None
        inputs = cast(  # return_dict: a BatchEncoding
            BatchEncoding,
            self.tokenizer.apply_chat_template(
                call.messages, tools=tools, add_generation_prompt=True, return_dict=True, return_tensors="pt"
            ),
        )
        constraint = self.grammars.processor(call.params.response_format)
        yield from stream_generate(
            self.model, self.tokenizer, inputs.to(self.model.device), call.params, self._lock, constraint
        )

    def complete(self, call: CompletionCall) -> Iterator[TextChunk]:
        constraint = self.grammars.processor(call.params.response_format)
        inputs = self.tokenizer(call.prompt, return_tensors="pt").to(self.model.device)
        yield from stream_generate(self.model, self.tokenizer, inputs, call.params, self._lock, constraint)

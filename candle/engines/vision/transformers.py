"""Vision-language chat on CPU: LLaVA through transformers, images given as decoded PIL images."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from transformers import AutoProcessor, LlavaForConditionalGeneration

from candle.catalog import ModelSpec
from candle.contracts import ChatCall, StreamKind, TextChunk

from ..chat.generation import stream_generate
from ..chat.grammar import Grammars
from ..device import load_model


class LlavaEngine:
    streams: ClassVar[StreamKind] = "sync"

    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        self.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
        self.model = load_model(LlavaForConditionalGeneration, folder, spec, trust_remote_code=spec.trust_remote_code)
        self._lock = threading.Lock()
        self.grammars = Grammars(self.model, self.processor.tokenizer, spec.limits.schema_compile_timeout_s)

    def chat(self, call: ChatCall) -> Iterator[TextChunk]:
        """``call.images`` are decoded images, one per ``{"type": "image"}`` placeholder, in order. A
        generator: the prompt and the grammar are made where it is first read, off the event loop."""
        prompt = self.processor.apply_chat_template(call.messages, tools=call.tools, add_generation_prompt=True)
        constraint = self.grammars.processor(call.params.response_format)
        inputs = self.processor(images=list(call.images) or None, text=prompt, return_tensors="pt")
        yield from stream_generate(
            self.model, self.processor.tokenizer, inputs.to(self.model.device), call.params, self._lock, constraint
        )

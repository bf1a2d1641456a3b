"""Text-to-text on CPU (and small GPUs without vLLM): transformers, with chat templates and streaming."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from candle.catalog import ModelSpec

from .chat_types import GenerationParams, TextChunk
from .device import load_model
from .errors import InvalidInput
from .generation import stream_generate


class TransformersTextEngine:
    """A causal LM loaded from a local snapshot folder."""

    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
        self.model = load_model(AutoModelForCausalLM, folder, spec, trust_remote_code=spec.trust_remote_code)
        self._lock = threading.Lock()

    def chat(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        images: list[Image.Image] | None = None,
        tool_choice: Any = None,  # tools reach the chat template; only vLLM's parsers act on the choice
    ) -> Iterator[TextChunk]:
        if images:
            raise InvalidInput("this model reads text only; send images to a vision model")
        inputs = self.tokenizer.apply_chat_template(
            messages, tools=tools, add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )
        return stream_generate(self.model, self.tokenizer, inputs.to(self.model.device), params, self._lock)

    def complete(self, prompt: str, params: GenerationParams) -> Iterator[TextChunk]:
        inputs = self.tokenizer(prompt, return_tensors="pt").to(self.model.device)
        return stream_generate(self.model, self.tokenizer, inputs, params, self._lock)

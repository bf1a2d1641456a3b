"""Vision-language chat on CPU: LLaVA through transformers, images given as decoded PIL images."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

from candle.catalog import ModelSpec

from .chat_types import GenerationParams, TextChunk
from .device import load_model
from .generation import stream_generate


class LlavaEngine:
    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        self.processor = AutoProcessor.from_pretrained(folder, trust_remote_code=spec.trust_remote_code)
        self.model = load_model(LlavaForConditionalGeneration, folder, spec, trust_remote_code=spec.trust_remote_code)
        self._lock = threading.Lock()

    def chat(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        images: list[Image.Image] | None = None,
        tool_choice: Any = None,  # tools reach the chat template; only vLLM's parsers act on the choice
    ) -> Iterator[TextChunk]:
        """``messages`` use ``{"type": "image"}`` placeholders, one per entry of ``images``, in order."""
        prompt = self.processor.apply_chat_template(messages, tools=tools, add_generation_prompt=True)
        inputs = self.processor(images=images or None, text=prompt, return_tensors="pt").to(self.model.device)
        return stream_generate(self.model, self.processor.tokenizer, inputs, params, self._lock)

"""Stand-in for the ``modeling_qwen.py`` of gte-Qwen2 and Stella: the classes their ``auto_map`` names.

The real file is an old copy of transformers' Qwen2 (its cache code breaks on transformers >= 4.56,
which is why their catalog entries load with ``use_cache: false``); this one reuses the installed
transformers' Qwen2, with bidirectional attention, as embedding models built on a decoder use it.
"""

from __future__ import annotations

from transformers import Qwen2Config
from transformers.models.qwen2 import modeling_qwen2


class Qwen2Model(modeling_qwen2.Qwen2Model):
    """Qwen2 whose tokens all see each other: an embedding reads the whole text at every position."""

    def __init__(self, config: Qwen2Config) -> None:
        config.is_causal = False  # transformers' mask builder then makes a bidirectional mask
        super().__init__(config)
        for layer in self.layers:
            layer.self_attn.is_causal = False  # type: ignore[union-attr]  # and SDPA must not add a causal one of its own


class Qwen2ForCausalLM(modeling_qwen2.Qwen2ForCausalLM):
    """Named in the real ``auto_map``; generation keeps the causal mask."""

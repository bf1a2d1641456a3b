"""Rerankers with sentence-transformers' ``CrossEncoder``: cross-encoders and LLM rerankers alike.

``CrossEncoder`` loads a sequence-classification model (bge-reranker, Jina's reranker through its
remote code) and scores a pair through the model's activation (a sigmoid for one label, so scores
are in (0, 1), as Cohere's ``relevance_score``); it loads a causal LM (Qwen3-Reranker style) as an
LLM reranker, rendering each pair through the model's chat template with ``query`` and ``document``
roles and scoring it by the log-odds of its ``yes`` and ``no`` logits (a sigmoid of which is the
model card's ``P(yes)``). A model whose own template has no such roles gets one from its entry's
``engine_args: {processor_kwargs: {chat_template: ...}}``.

Per-model prompts are the entry's ``prompts``: prepended to the query by a cross-encoder, a system
message (the instruction) for an LLM reranker; ``engine_args`` go to ``CrossEncoder`` (e.g.
``default_prompt_name``, ``max_length``), ``model_kwargs`` merged with candle's dtype rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers import CrossEncoder

from candle.catalog import ModelSpec

from ..device import device, dtype
from ..embedding.st_compat import model_kwargs
from ..errors import InvalidInput

BATCH_SIZE = 32  # pairs per forward pass (CrossEncoder.predict's own default)


class CrossEncoderEngine:
    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        engine_args = dict(spec.engine_args)
        loading = model_kwargs(dtype(), engine_args.pop("model_kwargs", {}))
        self.model = CrossEncoder(
            str(folder),
            device=device(),
            trust_remote_code=spec.trust_remote_code,
            prompts=dict(spec.prompts) or None,
            model_kwargs=loading,
            **engine_args,
        )

    @property
    def prompt_names(self) -> list[str]:
        return sorted(self.model.prompts)

    def score_pairs(
        self, pairs: list[tuple[str, str]], prompt_name: str | None = None, max_tokens_per_doc: int | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """A float32 score per pair, in order, and the tokens each pair fed the model."""
        prompt = self._prompt(prompt_name)
        if max_tokens_per_doc is not None:
            documents = truncated(self.model.tokenizer, [document for _, document in pairs], max_tokens_per_doc)
            pairs = [(query, document) for (query, _), document in zip(pairs, documents, strict=True)]
        scores = self.model.predict(pairs, prompt=prompt, batch_size=BATCH_SIZE, convert_to_numpy=True)
        return np.asarray(scores, dtype=np.float32).reshape(len(pairs)), self._token_counts(pairs, prompt)

    def _prompt(self, prompt_name: str | None) -> str | None:
        """The prompt text a name selects, or the model's default prompt (``default_prompt_name``)."""
        if prompt_name is None:
            default = self.model.default_prompt_name
            return self.model.prompts.get(default) if default else None
        if prompt_name not in self.model.prompts:
            raise InvalidInput(f"unknown prompt_name {prompt_name!r}; this model knows {self.prompt_names}")
        return self.model.prompts[prompt_name]

    def _token_counts(self, pairs: list[tuple[str, str]], prompt: str | None) -> list[int]:
        """Tokens per pair as the model read them (prompt, template and special tokens included, past
        its length limit not), from the same preprocessing ``predict`` ran, a batch at a time."""
        counts: list[int] = []
        for start in range(0, len(pairs), BATCH_SIZE):
            features = self.model.preprocess(pairs[start : start + BATCH_SIZE], prompt=prompt)
            counts += [int(n) for n in features["attention_mask"].sum(dim=1).tolist()]
        return counts


def truncated(tokenizer: Any, documents: list[str], max_tokens: int) -> list[str]:
    """Each document cut after its first ``max_tokens`` tokens (special tokens not counted), at the
    character where that token ends, so what is kept is the client's own text."""
    offsets = tokenizer(documents, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [
        document if len(spans) <= max_tokens else document[: spans[max_tokens - 1][1]]
        for document, spans in zip(documents, offsets, strict=True)
    ]

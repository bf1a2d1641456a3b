"""Text embeddings with sentence-transformers: per-model prompts, normalisation, ``dimensions``.

``engine_args`` go to ``SentenceTransformer`` (``config_kwargs: {use_cache: false}`` for code that
breaks on newer transformers' caches), but for ``model_kwargs`` (merged with candle's dtype rule)
and ``append_eos``: NV-Embed expects its tokenizer's EOS after every input, and its tokenizer does
not add it.

``dimensions`` uses a Matryoshka head of the model where the repo ships one (Stella's
``2_Dense_{dim}`` folders replace the final Dense layer), and otherwise truncates the normalised
vector and normalises it again, which is how MRL-trained models are meant to be shortened.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

from candle.catalog import ModelSpec

from ..device import device, dtype
from ..errors import InvalidInput
from .st_compat import Dense, Normalize, embedding_dimension, model_kwargs, preprocess, weights_dtype

_HEAD = re.compile(r"^2_Dense_(\d+)$")


class SentenceEmbeddingEngine:
    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        engine_args = dict(spec.engine_args)
        # candle's dtype rule unless the entry's model_kwargs say otherwise: left alone,
        # sentence-transformers loads the checkpoint's dtype, and bf16 weights crawl on a CPU.
        loading = model_kwargs(dtype(), engine_args.pop("model_kwargs", {}))
        append_eos = bool(engine_args.pop("append_eos", False))
        self.model = SentenceTransformer(
            str(folder),
            device=device(),
            trust_remote_code=spec.trust_remote_code,
            prompts=dict(spec.prompts) or None,
            model_kwargs=loading,
            **engine_args,
        )
        self.dimensions = int(embedding_dimension(self.model) or 0)
        self._suffix = self.model.tokenizer.eos_token if append_eos else ""
        self._head_folders = {int(m[1]): p for p in folder.iterdir() if (m := _HEAD.match(p.name)) and p.is_dir()}
        self._heads: dict[int, torch.nn.Module] = {}

    @property
    def prompt_names(self) -> list[str]:
        return sorted(self.model.prompts)

    def embed(self, texts: list[str], prompt_name: str | None = None, dimensions: int | None = None) -> np.ndarray:
        """One normalised float32 vector per text."""
        if dimensions is not None and dimensions > self.dimensions and dimensions not in self._head_folders:
            raise InvalidInput(f"dimensions must be at most {self.dimensions} for this model, got {dimensions}")
        if dimensions is not None and dimensions != self.dimensions and dimensions in self._head_folders:
            return self._embed_with_head(texts, prompt_name, dimensions)
        vectors = self.model.encode(texts, prompt_name=prompt_name, normalize_embeddings=True, convert_to_numpy=True)
        if dimensions is not None and dimensions < vectors.shape[1]:
            vectors = vectors[:, :dimensions]
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
        return vectors.astype(np.float32)

    def _embed_with_head(self, texts: list[str], prompt_name: str | None, dimensions: int) -> np.ndarray:
        if dimensions not in self._heads:
            head = Dense.load(str(self._head_folders[dimensions]))
            self._heads[dimensions] = head.to(device=self.model.device, dtype=weights_dtype(self.model))
        # The head replaces everything after pooling (the default Dense head, Normalize): it maps the
        # pooled embedding, as in Stella's [Transformer, Pooling, Dense] pipelines.
        body = list(itertools.takewhile(lambda m: not isinstance(m, (Dense, Normalize)), self.model))
        prompt = (self.model.prompts.get(prompt_name) or "") if prompt_name else ""
        features = preprocess(self.model, [prompt + t for t in texts])
        features = {k: v.to(self.model.device) if torch.is_tensor(v) else v for k, v in features.items()}
        with torch.inference_mode():
            for module in body:
                features = module(features)
            vectors = self._heads[dimensions](features)["sentence_embedding"]
        return torch.nn.functional.normalize(vectors, dim=-1).float().cpu().numpy()

    def embed_items(
        self, items: list[str | bytes], prompt_name: str | None = None, dimensions: int | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """Vectors and per-item token counts, the interface the embedding replicas batch over."""
        texts = [item for item in items if isinstance(item, str)]
        if len(texts) != len(items):
            raise InvalidInput("this model embeds text only; send images to an image-embedding model")
        if prompt_name is not None and prompt_name not in self.model.prompts:
            raise InvalidInput(f"unknown input_type {prompt_name!r}; this model knows {self.prompt_names}")
        texts = [text + self._suffix for text in texts]
        tokens = preprocess(self.model, texts)["attention_mask"].sum(dim=1).tolist()
        return self.embed(texts, prompt_name, dimensions), [int(t) for t in tokens]

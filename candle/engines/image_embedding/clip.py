"""Image (and text) embeddings in CLIP's joint space, with transformers' CLIPModel."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from candle.catalog import ModelSpec

from ..device import load_model
from ..errors import InvalidInput
from ..image_decoding import decode_image


class ClipEngine:
    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        self.processor = CLIPProcessor.from_pretrained(folder)
        self.model = load_model(CLIPModel, folder, spec)
        self.dimensions = int(self.model.config.projection_dim)

    def embed_images(self, images: list[Image.Image]) -> np.ndarray:
        inputs = self.processor(images=[i.convert("RGB") for i in images], return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            features = self.model.get_image_features(**inputs)
        return self._normalised(features)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        inputs = self.processor(text=texts, padding=True, truncation=True, return_tensors="pt").to(self.model.device)
        with torch.inference_mode():
            features = self.model.get_text_features(**inputs)
        return self._normalised(features)

    def embed_items(
        self, items: list[str | bytes], prompt_name: str | None = None, dimensions: int | None = None
    ) -> tuple[np.ndarray, list[int]]:
        """Images (encoded bytes) and texts in one joint space, in the order given."""
        if prompt_name is not None:
            raise InvalidInput("input_type is not supported by CLIP models")
        if dimensions is not None and dimensions != self.dimensions:
            raise InvalidInput(f"dimensions must be {self.dimensions} for this model, got {dimensions}")
        images = {i: item for i, item in enumerate(items) if isinstance(item, bytes)}
        text = {i: item for i, item in enumerate(items) if isinstance(item, str)}
        image_at, text_at = list(images), list(text)
        vectors = np.zeros((len(items), self.dimensions), dtype=np.float32)
        tokens = [0] * len(items)
        if image_at:
            vectors[image_at] = self.embed_images([decode_image(data) for data in images.values()])
        if text_at:
            texts = list(text.values())
            vectors[text_at] = self.embed_texts(texts)
            counts = self.processor.tokenizer(texts, truncation=True)["input_ids"]
            for i, ids in zip(text_at, counts, strict=True):
                tokens[i] = len(ids)
        return vectors, tokens

    @staticmethod
    def _normalised(features: torch.Tensor | object) -> np.ndarray:
        tensor = features if isinstance(features, torch.Tensor) else features.pooler_output  # type: ignore[attr-defined]
        return torch.nn.functional.normalize(tensor.float(), dim=-1).cpu().numpy()

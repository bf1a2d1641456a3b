"""A chat request's messages as chat templates read them, shared by the gateway and the batch job.

Images become ``{"type": "image"}`` parts and are listed with where they came from; the caller
reads them (the gateway may fetch remote ones, a batch job only decodes data URLs). Everything
that can be refused is refused here, before any image is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from candle.catalog import ModelSpec

from .errors import bad_request
from .image_urls import ImageReference
from .schemas import ChatCompletionRequest


@dataclass(frozen=True)
class TemplateConversation:
    messages: list[dict[str, Any]]
    images: tuple[ImageReference, ...]  # in the order of the messages' image parts


def template_conversation(body: ChatCompletionRequest, spec: ModelSpec) -> TemplateConversation:
    messages: list[dict[str, Any]] = []
    images: list[ImageReference] = []
    for m, message in enumerate(body.messages):
        entry: dict[str, Any] = {"role": message.role, "content": message.text()}
        if message.image_urls():
            if spec.capability != "vision":
                raise bad_request(f"The model `{spec.name}` does not accept images.", f"messages[{m}].content")
            parts: list[dict[str, Any]] = []
            for p, part in enumerate(message.content if isinstance(message.content, list) else []):
                if part.type == "image_url" and part.image_url:
                    images.append(ImageReference(part.image_url.url, f"messages[{m}].content[{p}]"))
                    parts.append({"type": "image"})
                elif part.text:
                    parts.append({"type": "text", "text": part.text})
            entry["content"] = parts
        messages.append(entry | message.template_fields())
    if len(images) > spec.limits.max_images_per_request:
        raise bad_request(f"at most {spec.limits.max_images_per_request} images per request", "messages")
    return TemplateConversation(messages, tuple(images))

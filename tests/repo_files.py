"""A realistic file listing of a remote-code model repo, and what a catalog entry's patterns keep of it.

It gathers what the production remote-code repos ship (Kimi K2's tiktoken tokenizer code, NV-Embed's
and GTE-Qwen2's modelling code, Stella's ``2_Dense_{dim}`` heads in two formats, ONNX exports), so
the patterns are checked against names like the hub's instead of comparing pattern lists.
"""

from __future__ import annotations

from collections.abc import Iterable

from huggingface_hub.utils import filter_repo_objects

CODE = ("configuration_deepseek.py", "modeling_deepseek.py", "tokenization_kimi.py", "modeling_nvembed.py")
SAFETENSORS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "2_Dense_1024/model.safetensors")
OTHER_FORMATS = ("pytorch_model.bin", "2_Dense_1024/pytorch_model.bin", "onnx/model.onnx", "onnx/model_quantized.onnx")
CONFIG = (
    "config.json",
    "modules.json",
    "model.safetensors.index.json",
    "tokenizer_config.json",
    "tiktoken.model",
    "1_Pooling/config.json",
    "2_Dense_1024/config.json",
)
REPO_FILES = (*CODE, *SAFETENSORS, *OTHER_FORMATS, *CONFIG)


def selected(allow_patterns: Iterable[str] | None, ignore_patterns: Iterable[str] | None) -> set[str]:
    """What the download service fetches of ``REPO_FILES`` (huggingface_hub's own pattern filter)."""
    allow = list(allow_patterns) if allow_patterns else None
    ignore = list(ignore_patterns) if ignore_patterns else None
    return set(filter_repo_objects(REPO_FILES, allow_patterns=allow, ignore_patterns=ignore))

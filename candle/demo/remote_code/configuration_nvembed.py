"""Stand-in for NV-Embed-v2's ``configuration_nvembed.py``: the three configs its ``config.json`` nests.

``NVEmbedConfig`` holds a decoder (``text_config``, a bidirectional Mistral) and the latent-attention
pooler (``latent_attention_config``), with NV-Embed's switches (``add_eos``, ``padding_side``...).
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import MistralConfig, PretrainedConfig

NVEMBED_TYPE = "nvembed"
LATENT_ATTENTION_TYPE = "latent_attention"
BIDIR_MISTRAL_TYPE = "bidir_mistral"


class LatentAttentionConfig(PretrainedConfig):
    """Cross-attention from the decoder's token states to a trained array of latent vectors."""

    model_type = LATENT_ATTENTION_TYPE

    def __init__(
        self,
        num_latents_vector: int = 512,
        num_cross_heads: int = 8,
        cross_dim_head: int = 4096,
        hidden_dim: int = 4096,
        latent_dim: int = 4096,
        **kwargs: Any,
    ) -> None:
        self.num_latents_vector = num_latents_vector
        self.num_cross_heads = num_cross_heads
        self.cross_dim_head = cross_dim_head
        self.hidden_dim = hidden_dim
        self.latent_dim = latent_dim
        super().__init__(**kwargs)


class BidirectionalMistralConfig(MistralConfig):
    model_type = BIDIR_MISTRAL_TYPE


class NVEmbedConfig(PretrainedConfig):
    model_type = NVEMBED_TYPE
    sub_configs: ClassVar[dict[str, type[PretrainedConfig]]] = {
        "text_config": BidirectionalMistralConfig,
        "latent_attention_config": LatentAttentionConfig,
    }

    def __init__(
        self,
        latent_attention_config: dict[str, Any] | LatentAttentionConfig | None = None,
        text_config: dict[str, Any] | BidirectionalMistralConfig | None = None,
        padding_side: str = "right",
        add_pad_token: bool = True,
        is_mask_instruction: bool = True,
        add_eos: bool = True,
        mask_type: str = "b",
        **kwargs: Any,
    ) -> None:
        self.latent_attention_config = _config(LatentAttentionConfig, latent_attention_config)
        self.text_config = _config(BidirectionalMistralConfig, text_config)
        self.padding_side = padding_side
        self.add_pad_token = add_pad_token
        self.is_mask_instruction = is_mask_instruction
        self.add_eos = add_eos
        self.mask_type = mask_type
        super().__init__(**kwargs)


def _config(cls: type[PretrainedConfig], value: dict[str, Any] | PretrainedConfig | None) -> PretrainedConfig:
    if isinstance(value, PretrainedConfig):
        return value
    return cls(**{k: v for k, v in (value or {}).items() if k != "model_type"})

"""Stand-in for NV-Embed-v2's ``modeling_nvembed.py``: a bidirectional Mistral read out by latent attention.

``NVEmbedModel.forward`` returns the latent-attended token states as ``last_hidden_state``, which
sentence-transformers mean-pools (the repo's ``1_Pooling``); given a ``pool_mask`` it pools them
itself, as NV-Embed's own ``encode`` does. The real file imports names transformers removed
(``MISTRAL_INPUTS_DOCSTRING``), so it loads on transformers 4.42 only; this one loads on candle's
and on 4.42.4 (production's pin for the real one), with the same vectors.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MistralModel, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .configuration_nvembed import BidirectionalMistralConfig, LatentAttentionConfig, NVEmbedConfig


class BidirectionalMistralModel(MistralModel):
    """Mistral without the causal mask: NV-Embed trains its decoder to read in both directions.

    The padding mask goes in as a 4D additive mask (0 to attend, the dtype's minimum for padding),
    which transformers 4.42 and 5 both take as given: ``config.is_causal = False`` exists in 5 only,
    and 4.42 would add its causal mask to a 2D one.
    """

    config_class = BidirectionalMistralConfig

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> BaseModelOutput:
        keep = attention_mask[:, None, None, :].bool().expand(-1, 1, input_ids.shape[1], -1)
        blocked = torch.finfo(self.dtype).min
        mask = torch.zeros(keep.shape, dtype=self.dtype, device=input_ids.device).masked_fill(~keep, blocked)
        return super().forward(input_ids=input_ids, attention_mask=mask, use_cache=False)


class LatentAttentionModel(PreTrainedModel):
    """Token states (queries) attend to trained latents (keys and values), then a feed-forward block."""

    config_class = LatentAttentionConfig

    def __init__(self, config: LatentAttentionConfig) -> None:
        super().__init__(config)
        self.latents = nn.Parameter(torch.randn(config.num_latents_vector, config.latent_dim))
        self.cross_attend = nn.MultiheadAttention(
            config.hidden_dim, config.num_cross_heads, kdim=config.latent_dim, vdim=config.latent_dim, batch_first=True
        )
        self.feed_forward = nn.Sequential(
            nn.LayerNorm(config.hidden_dim),
            nn.Linear(config.hidden_dim, 4 * config.hidden_dim),
            nn.GELU(),
            nn.Linear(4 * config.hidden_dim, config.hidden_dim),
        )
        self.post_init()

    def forward(self, hiddens: torch.Tensor, pool_mask: torch.Tensor | None = None) -> torch.Tensor:
        latents = self.latents.unsqueeze(0).expand(hiddens.shape[0], -1, -1)
        attended = hiddens + self.cross_attend(hiddens, latents, latents, need_weights=False)[0]
        hiddens = attended + self.feed_forward(attended)
        if pool_mask is None:
            return hiddens
        weights = pool_mask.unsqueeze(-1).to(hiddens.dtype)
        return (hiddens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


class NVEmbedModel(PreTrainedModel):
    config_class = NVEmbedConfig

    def __init__(self, config: NVEmbedConfig) -> None:
        super().__init__(config)
        # The sub-configs are built as their classes in NVEmbedConfig; transformers types them as the base.
        self.embedding_model = BidirectionalMistralModel(config.text_config)  # type: ignore[arg-type]
        self.latent_attention_model = LatentAttentionModel(config.latent_attention_config)  # type: ignore[arg-type]
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pool_mask: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> BaseModelOutput | tuple[torch.Tensor]:
        states = self.embedding_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        embeds = self.latent_attention_model(states, pool_mask)
        return BaseModelOutput(last_hidden_state=embeds) if return_dict else (embeds,)

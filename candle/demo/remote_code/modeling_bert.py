"""Stand-in for ``jinaai/jina-bert-implementation``'s ``modeling_bert.py``: BERT with ALiBi and GEGLU.

Attention gets a symmetric linear bias ``-slope * |i - j|`` per head instead of position
embeddings, which is what lets JinaBERT read 8192 tokens after training on 512.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, MaskedLMOutput

from .configuration_bert import JinaBertConfig


def alibi_slopes(heads: int) -> torch.Tensor:
    """One slope per head, a geometric series from 2^(-8/heads) (the ALiBi paper's choice)."""
    return torch.tensor([2 ** (-8 * (h + 1) / heads) for h in range(heads)])


class JinaBertLayer(nn.Module):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape
        q, k, v = self.qkv(hidden).view(batch, length, 3, self.heads, width // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        hidden = self.attention_norm(hidden + self.out(attended.transpose(1, 2).reshape(batch, length, width)))
        gate, up = self.gated_layers(hidden).chunk(2, dim=-1)  # GEGLU: gelu(gate) * up
        return self.mlp_norm(hidden + self.wo(nn.functional.gelu(gate) * up))


class JinaBertPreTrainedModel(PreTrainedModel):
    config_class = JinaBertConfig
    base_model_prefix = "bert"


class JinaBertModel(JinaBertPreTrainedModel):
    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__(config)
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.embeddings_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(JinaBertLayer(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> BaseModelOutput | tuple[torch.Tensor]:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        types = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
        hidden = self.embeddings_norm(self.word_embeddings(input_ids) + self.token_type_embeddings(types))
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        distance = (positions[None, :] - positions[:, None]).abs().to(hidden.dtype)
        # Computed per call, not kept as a buffer: transformers builds the model on the meta device and
        # fills in only what the checkpoint holds, so a non-persistent buffer would be uninitialised memory.
        slopes = alibi_slopes(self.config.num_attention_heads).to(hidden)
        bias = -slopes[:, None, None] * distance  # (heads, length, length)
        bias = bias[None] + torch.where(mask[:, None, None, :].bool(), 0.0, -math.inf).to(hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, bias)
        return BaseModelOutput(last_hidden_state=hidden) if return_dict else (hidden,)


class JinaBertForMaskedLM(JinaBertPreTrainedModel):
    """The repos' ``architectures`` entry: the encoder and a vocabulary head."""

    def __init__(self, config: JinaBertConfig) -> None:
        super().__init__(config)
        self.bert = JinaBertModel(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> MaskedLMOutput:
        hidden = self.bert(input_ids, attention_mask).last_hidden_state
        return MaskedLMOutput(logits=self.decoder(hidden))

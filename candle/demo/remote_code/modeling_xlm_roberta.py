"""Stand-in for Jina Reranker v2's ``modeling_xlm_roberta.py``: an XLM-R cross-encoder.

The real file runs flash attention over unpadded tokens; this one runs torch's
``scaled_dot_product_attention`` over the padded batch, with the same parameter layout at a tiny
width: ``roberta`` (embeddings, post-norm encoder layers) and a ``classifier`` head over the first
token, one relevance logit per pair.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, SequenceClassifierOutput

from .configuration_xlm_roberta import XLMRobertaFlashConfig
from .embedding import XLMRobertaEmbeddings


class Block(nn.Module):
    def __init__(self, config: XLMRobertaFlashConfig) -> None:
        super().__init__()
        self.heads = config.num_attention_heads
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden.shape
        q, k, v = self.Wqkv(hidden).view(batch, length, 3, self.heads, width // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        hidden = self.norm1(hidden + self.out_proj(attended.transpose(1, 2).reshape(batch, length, width)))
        return self.norm2(hidden + self.fc2(nn.functional.gelu(self.fc1(hidden))))


class XLMRobertaPreTrainedModel(PreTrainedModel):
    config_class = XLMRobertaFlashConfig
    base_model_prefix = "roberta"


class XLMRobertaModel(XLMRobertaPreTrainedModel):
    def __init__(self, config: XLMRobertaFlashConfig) -> None:
        super().__init__(config)
        self.embeddings = XLMRobertaEmbeddings(config)
        self.emb_ln = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.post_init()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> BaseModelOutput:
        keep = (torch.ones_like(input_ids) if attention_mask is None else attention_mask).bool()
        hidden = self.emb_ln(self.embeddings(input_ids))
        for layer in self.layers:
            hidden = layer(hidden, keep)
        return BaseModelOutput(last_hidden_state=hidden)


class XLMRobertaClassificationHead(nn.Module):
    def __init__(self, config: XLMRobertaFlashConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels or 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.tanh(self.dense(hidden[:, 0])))


class XLMRobertaForSequenceClassification(XLMRobertaPreTrainedModel):
    """The repo's ``architectures`` entry: one relevance logit per (query, document) pair."""

    def __init__(self, config: XLMRobertaFlashConfig) -> None:
        super().__init__(config)
        self.roberta = XLMRobertaModel(config)
        self.classifier = XLMRobertaClassificationHead(config)
        self.post_init()

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> SequenceClassifierOutput:
        hidden = self.roberta(input_ids, attention_mask).last_hidden_state
        return SequenceClassifierOutput(logits=self.classifier(hidden))

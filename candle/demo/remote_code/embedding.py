"""Stand-in for Jina Reranker v2's ``embedding.py``: XLM-R's token and position embeddings.

A module of its own, as in the real repo, which ``modeling_xlm_roberta.py`` imports relatively: the
download service must fetch every ``*.py`` of the repo, not only those ``auto_map`` names.
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_xlm_roberta import XLMRobertaFlashConfig


class XLMRobertaEmbeddings(nn.Module):
    def __init__(self, config: XLMRobertaFlashConfig) -> None:
        super().__init__()
        self.padding_idx = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=self.padding_idx)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        # XLM-R numbers real tokens from padding_idx + 1 and gives padding the padding index itself.
        real = input_ids.ne(self.padding_idx).long()
        positions = torch.cumsum(real, dim=1) * real + self.padding_idx
        types = torch.zeros_like(input_ids)
        return self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings(types)

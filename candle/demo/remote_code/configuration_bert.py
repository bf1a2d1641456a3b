"""Stand-in for ``jinaai/jina-bert-implementation``'s ``configuration_bert.py``: JinaBERT's config.

Jina v2 repos keep no code of their own: their ``auto_map`` names ``jinaai/jina-bert-implementation--
configuration_bert.JinaBertConfig``, so this file lives in a second repo of the look-alike store.
JinaBERT is BERT with ALiBi position biases (no position table, so 8192-token inputs) and a GEGLU
feed-forward; ``model_type`` stays ``bert``.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class JinaBertConfig(PretrainedConfig):
    model_type = "bert"

    def __init__(
        self,
        vocab_size: int = 30528,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 8192,
        type_vocab_size: int = 2,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-12,
        pad_token_id: int = 0,
        position_embedding_type: str = "alibi",
        feed_forward_type: str = "geglu",
        emb_pooler: str | None = "mean",
        classifier_dropout: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pad_token_id=pad_token_id, **kwargs)  # type: ignore[call-arg]  # a **kwargs field there
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.max_position_embeddings = max_position_embeddings
        self.type_vocab_size = type_vocab_size
        self.initializer_range = initializer_range
        self.layer_norm_eps = layer_norm_eps
        self.position_embedding_type = position_embedding_type
        self.feed_forward_type = feed_forward_type
        self.emb_pooler = emb_pooler
        self.classifier_dropout = classifier_dropout

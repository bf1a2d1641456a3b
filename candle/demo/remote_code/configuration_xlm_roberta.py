"""Stand-in for ``jinaai/jina-reranker-v2-base-multilingual``'s ``configuration_xlm_roberta.py``.

Jina Reranker v2 ships its modelling code in its own repo (``auto_map`` without a repo prefix): an
XLM-R encoder written for flash attention, split over several modules that import each other. Its
config keeps ``model_type`` ``xlm-roberta`` and adds the attention switches this stand-in accepts and
ignores (``use_flash_attn``, ``fused_bias_fc``...): it always runs torch's own attention.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class XLMRobertaFlashConfig(PretrainedConfig):
    model_type = "xlm-roberta"

    def __init__(
        self,
        vocab_size: int = 250002,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        hidden_act: str = "gelu",
        hidden_dropout_prob: float = 0.1,
        attention_probs_dropout_prob: float = 0.1,
        max_position_embeddings: int = 1026,
        type_vocab_size: int = 1,
        initializer_range: float = 0.02,
        layer_norm_eps: float = 1e-5,
        pad_token_id: int = 1,
        bos_token_id: int = 0,
        eos_token_id: int = 2,
        classifier_dropout: float | None = None,
        use_flash_attn: bool = True,
        emb_pooler: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id, **kwargs)  # type: ignore[call-arg]  # **kwargs fields there
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
        self.classifier_dropout = classifier_dropout
        self.use_flash_attn = use_flash_attn
        self.emb_pooler = emb_pooler

"""Tiny look-alikes of the production embedders that ship their own modelling code (``trust_remote_code``).

Registered in :mod:`candle.demo.tiny_models` (same store, seeds and caching); each repo has the real
one's layout: ``config.json`` with its ``auto_map``, the sentence-transformers modules
(``modules.json``, ``1_Pooling``, Dense heads, ``config_sentence_transformers.json`` prompts) and
candle's own modelling files from :mod:`candle.demo.remote_code` under the real files' names.

* Stella (``NovaSearch/stella_en_1.5B_v5``): Qwen2 via ``modeling_qwen.py`` in its own repo, mean
  pooling, MRL heads ``2_Dense_{dim}`` at 1/32 of the real sizes (8 ... 256, default 32), each as
  ``model.safetensors`` and ``pytorch_model.bin`` as in the real repo.
* GTE-Qwen2 (``Alibaba-NLP/gte-Qwen2-1.5B-instruct``): ``auto_map`` in the ``repo--module.Class``
  form naming its own repo, last-token pooling over an appended ``<|endoftext|>``, normalized.
* NV-Embed-v2 (``nvidia/NV-Embed-v2``): ``configuration_nvembed.py`` / ``modeling_nvembed.py``, a
  bidirectional Mistral with latent attention; the tokenizer adds BOS, the caller must append EOS.
* Jina v2 (``jinaai/jina-embeddings-v2-base-en``): no code of its own; its ``auto_map`` points into a
  second repo (:data:`JINA_CODE_REPO`) that holds ``configuration_bert.py`` and ``modeling_bert.py``.
* Jina Reranker v2 (``jinaai/jina-reranker-v2-base-multilingual``): an XLM-R cross-encoder whose code is
  in its own repo, ``auto_map`` without a repo prefix, and split over modules that import each other
  (``modeling_xlm_roberta.py`` imports ``embedding.py``); one label, no sentence-transformers files, an
  ``XLMRobertaTokenizer`` with the real one's 1,024-token limit.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sentence_transformers.base.modules.dense import Dense
from tokenizers import processors
from torch import nn
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2Model, XLMRobertaTokenizer

from candle.demo.remote_code import (
    configuration_bert,
    configuration_nvembed,
    configuration_xlm_roberta,
    embedding,
    modeling_bert,
    modeling_nvembed,
    modeling_qwen,
    modeling_xlm_roberta,
)
from candle.demo.tiny_tokenizers import MAX_POSITIONS, byte_level_bpe, special_ids, xlm_roberta_tokenizer

# Short name -> repo id, part of candle.demo.tiny_models.TINY_MODELS.
REPOS: dict[str, str] = {
    "stella": "candle-tiny/stella_en_1.5B_v5",
    "gte_qwen2": "candle-tiny/gte-Qwen2-1.5B-instruct",
    "nv_embed": "candle-tiny/NV-Embed-v2",
    "jina_v2": "candle-tiny/jina-embeddings-v2-base-en",
    "jina_bert_code": "candle-tiny/jina-bert-implementation",
    "jina_reranker_v2": "candle-tiny/jina-reranker-v2-base-multilingual",
}
JINA_CODE_REPO = REPOS["jina_bert_code"]

HIDDEN = 64
# The decoders under Stella, GTE-Qwen2 (Qwen2) and NV-Embed (Mistral): two layers, grouped-query heads.
DECODER: dict[str, Any] = {
    "hidden_size": HIDDEN,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": MAX_POSITIONS,
}
STELLA_HEADS = (8, 24, 32, 64, 128, 192, 256)  # the real 256 ... 8192, divided by 32
STELLA_DEFAULT_HEAD = 32  # the real modules.json's 2_Dense_1024
STELLA_PROMPTS = {
    "s2p_query": "Instruct: Given a web search query, retrieve relevant passages that answer the query.\nQuery: ",
    "s2s_query": "Instruct: Retrieve semantically similar text.\nQuery: ",
}
QWEN_EOS = "<|endoftext|>"
# Reranker weights drawn wide: at std 0.02 every pair scores within 1e-4 of 0.5 and orders are ties.
RERANKER_INIT_RANGE = 0.5
JINA_RERANKER_MAX_TOKENS = 1024  # the real tokenizer's model_max_length (positions: 1,026)
ST_VERSIONS = {"__version__": {"sentence_transformers": "3.0.1", "transformers": "4.42.4", "pytorch": "2.3.1"}}


# ---------------------------------------------------------------------------------------------
# Files every sentence-transformers repo has


def _write_json(path: Path, data: dict[str, Any] | list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _sentence_transformer_files(
    folder: Path,
    pooling: str,
    heads: tuple[str, ...] = (),
    normalize: bool = False,
    prompts: dict[str, str] | None = None,
) -> None:
    """modules.json (Transformer, Pooling, then the given Dense head folders and Normalize), the
    pooling config, sentence_bert_config.json and config_sentence_transformers.json."""
    modules = [("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling")]
    modules += [(head, "sentence_transformers.models.Dense") for head in heads]
    if normalize:
        modules.append(("", "sentence_transformers.models.Normalize"))
    _write_json(
        folder / "modules.json",
        [{"idx": i, "name": str(i), "path": path, "type": kind} for i, (path, kind) in enumerate(modules)],
    )
    modes = ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens", "lasttoken")
    pooling_config = {f"pooling_mode_{mode}": mode == pooling for mode in modes}
    _write_json(folder / "1_Pooling" / "config.json", {"word_embedding_dimension": HIDDEN, **pooling_config})
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": MAX_POSITIONS, "do_lower_case": False})
    st_config = {**ST_VERSIONS, "prompts": prompts or {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    _write_json(folder / "config_sentence_transformers.json", st_config)


def _dense_head(folder: Path, out_features: int) -> None:
    """A linear MRL head saved in both formats, as Stella's are (catalogs fetch one of them)."""
    head = Dense(HIDDEN, out_features, activation_function=nn.Identity())
    folder.mkdir(parents=True)
    head.save(str(folder))
    head.save(str(folder), safe_serialization=False)


def _copy_code(folder: Path, *modules: Any) -> None:
    for module in modules:
        shutil.copyfile(module.__file__, folder / Path(module.__file__).name)


def _patch_config(folder: Path, **fields: Any) -> None:
    """Add the real config.json's fields that saving a transformers model does not write (auto_map...)."""
    path = folder / "config.json"
    _write_json(path, {**json.loads(path.read_text()), **fields})


# ---------------------------------------------------------------------------------------------
# Tokenizers: byte-level BPE on the shared corpus, with each family's specials and templates


def _bpe_tokenizer(specials: list[str], template: str, **tokens: str) -> PreTrainedTokenizerFast:
    """``template`` is a tokenizers TemplateProcessing single-sequence template, e.g. ``"<s> $A"``."""
    backend = byte_level_bpe(specials)
    used = [token for token in specials if token in template]
    backend.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(token, backend.token_to_id(token)) for token in used]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=MAX_POSITIONS, **tokens)


def _qwen_tokenizer(append_eos: bool) -> PreTrainedTokenizerFast:
    template = f"$A {QWEN_EOS}" if append_eos else "$A"
    return _bpe_tokenizer([QWEN_EOS, "<|im_start|>", "<|im_end|>"], template, eos_token=QWEN_EOS, pad_token=QWEN_EOS)


# ---------------------------------------------------------------------------------------------
# The look-alikes


def _qwen_embedder(folder: Path, tokenizer: PreTrainedTokenizerFast, auto_map: dict[str, str]) -> None:
    """Weights of transformers' Qwen2 (the parameter names of the real checkpoints) under candle's
    modeling_qwen.py, which the config's auto_map names."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        **DECODER,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    Qwen2Model(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _copy_code(folder, modeling_qwen)
    _patch_config(folder, architectures=["Qwen2ForCausalLM"], auto_map=auto_map, use_cache=True)


def _qwen_auto_map(prefix: str = "") -> dict[str, str]:
    return {
        "AutoModel": f"{prefix}modeling_qwen.Qwen2Model",
        "AutoModelForCausalLM": f"{prefix}modeling_qwen.Qwen2ForCausalLM",
    }


def build_stella(folder: Path) -> None:
    _qwen_embedder(folder, _qwen_tokenizer(append_eos=False), _qwen_auto_map())
    heads = tuple(f"2_Dense_{dim}" for dim in STELLA_HEADS)
    for head, dim in zip(heads, STELLA_HEADS, strict=True):
        _dense_head(folder / head, dim)
    default_head = (f"2_Dense_{STELLA_DEFAULT_HEAD}",)
    _sentence_transformer_files(folder, "mean_tokens", heads=default_head, prompts=STELLA_PROMPTS)


def build_gte_qwen2(folder: Path) -> None:
    _qwen_embedder(folder, _qwen_tokenizer(append_eos=True), _qwen_auto_map(f"{REPOS['gte_qwen2']}--"))
    _sentence_transformer_files(folder, "lasttoken", normalize=True)


def build_nv_embed(folder: Path) -> None:
    """Mistral-style specials; BOS is added by the tokenizer, EOS only by a caller who appends it."""
    tokenizer = _bpe_tokenizer(
        ["<unk>", "<s>", "</s>"], "<s> $A", bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>"
    )
    text = configuration_nvembed.BidirectionalMistralConfig(
        vocab_size=len(tokenizer),
        **DECODER,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    latent = configuration_nvembed.LatentAttentionConfig(
        num_latents_vector=16, num_cross_heads=2, cross_dim_head=HIDDEN, hidden_dim=HIDDEN, latent_dim=HIDDEN
    )
    config = configuration_nvembed.NVEmbedConfig(latent_attention_config=latent, text_config=text, hidden_size=HIDDEN)
    modeling_nvembed.NVEmbedModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _tokenizer_for_transformers_4(folder)
    _copy_code(folder, configuration_nvembed, modeling_nvembed)
    auto_map = {"AutoConfig": "configuration_nvembed.NVEmbedConfig", "AutoModel": "modeling_nvembed.NVEmbedModel"}
    _patch_config(folder, architectures=["NVEmbedModel"], auto_map=auto_map)
    _sentence_transformer_files(folder, "mean_tokens", normalize=True)


def _tokenizer_for_transformers_4(folder: Path) -> None:
    """Tokenizer files transformers 4.42.4 (the real NV-Embed-v2's pin) reads too, as the real repo's:
    a class name both know (5 writes ``TokenizersBackend``), no ``token_type_ids`` for a model that
    takes none (4's fast tokenizers return them unless told), and BPE merges as ``"a b"`` strings
    (tokenizers 0.19 cannot read the pairs newer ones write)."""
    config_path, tokenizer_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
    config = json.loads(config_path.read_text())
    config |= {"tokenizer_class": "PreTrainedTokenizerFast", "model_input_names": ["input_ids", "attention_mask"]}
    _write_json(config_path, config)
    tokenizer = json.loads(tokenizer_path.read_text())
    tokenizer["model"]["merges"] = [" ".join(pair) for pair in tokenizer["model"]["merges"]]
    _write_json(tokenizer_path, tokenizer)


def build_jina_v2(folder: Path) -> None:
    """Weights and tokenizer only: the code is in the second repo its auto_map names."""
    tokenizer = _bpe_tokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        "[CLS] $A [SEP]",
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    config = configuration_bert.JinaBertConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128
    )
    modeling_bert.JinaBertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    code = f"{JINA_CODE_REPO}--"
    auto_map = {
        "AutoConfig": f"{code}configuration_bert.JinaBertConfig",
        "AutoModel": f"{code}modeling_bert.JinaBertModel",
        "AutoModelForMaskedLM": f"{code}modeling_bert.JinaBertForMaskedLM",
    }
    _patch_config(folder, architectures=["JinaBertForMaskedLM"], auto_map=auto_map)
    _sentence_transformer_files(folder, "mean_tokens")


def build_jina_bert_code(folder: Path) -> None:
    """The code repo: modelling files and a README, no weights (as jinaai/jina-bert-implementation)."""
    folder.mkdir(parents=True, exist_ok=True)
    _copy_code(folder, configuration_bert, modeling_bert)


def build_jina_reranker_v2(folder: Path) -> None:
    """Weights, tokenizer and the modelling files, all in the one repo, as the real one."""
    tokenizer: XLMRobertaTokenizer = xlm_roberta_tokenizer(JINA_RERANKER_MAX_TOKENS)
    config = configuration_xlm_roberta.XLMRobertaFlashConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=JINA_RERANKER_MAX_TOKENS + 2,
        num_labels=1,
        initializer_range=RERANKER_INIT_RANGE,
        **special_ids(tokenizer),
    )
    modeling_xlm_roberta.XLMRobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    _copy_code(folder, configuration_xlm_roberta, embedding, modeling_xlm_roberta)
    auto_map = {
        "AutoConfig": "configuration_xlm_roberta.XLMRobertaFlashConfig",
        "AutoModel": "modeling_xlm_roberta.XLMRobertaModel",
        "AutoModelForSequenceClassification": "modeling_xlm_roberta.XLMRobertaForSequenceClassification",
    }
    _patch_config(folder, architectures=["XLMRobertaForSequenceClassification"], auto_map=auto_map)


# name -> (build, what the repo's README calls it), registered by candle.demo.tiny_models.
RECIPES: dict[str, tuple[Callable[[Path], None], str]] = {
    "stella": (build_stella, "Stella-style Qwen2 embedder (candle's modeling_qwen.py, 2_Dense_{dim} heads)"),
    "gte_qwen2": (build_gte_qwen2, "GTE-Qwen2-style embedder (candle's modeling_qwen.py, last-token pooling)"),
    "nv_embed": (build_nv_embed, "NV-Embed-style embedder (candle's modeling_nvembed.py, latent attention)"),
    "jina_v2": (build_jina_v2, "Jina-v2-style embedder (code in the jina-bert-implementation look-alike)"),
    "jina_bert_code": (build_jina_bert_code, "JinaBERT code repo (candle's configuration_bert.py, modeling_bert.py)"),
    "jina_reranker_v2": (
        build_jina_reranker_v2,
        "Jina-Reranker-v2-style cross-encoder (candle's modeling_xlm_roberta.py)",
    ),
}

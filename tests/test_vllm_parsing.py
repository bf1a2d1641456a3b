"""The catalog's vLLM tool-call and reasoning parsers, run for real over streamed output.

Needs vLLM (the ``gpu`` extra), so the main suite skips it; ``make test`` runs it in both vLLM
venvs (the ``gpu`` extra's release and the CPU build). The parsers themselves are plain Python.
The tiny models' tokenizers have the marker tokens of the real Qwen3-Coder, Kimi K2 and
Phi-4-reasoning tokenizers, and the output below is fed one token at a time, the way ``AsyncLLM``
streams deltas.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("vllm.parser.parser_manager", reason="vLLM (the gpu extra) is not installed")

from transformers import AutoTokenizer

from candle.api.responses import AssistantMessage
from candle.catalog import load_catalog
from candle.contracts import GenerationParams, TextChunk
from candle.demo.tiny_models import TINY_MODELS, build_tiny_store
from candle.engines.chat.vllm_parsing import PARSER_KEYS, OutputParsers

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    }
]
CHAT = [{"role": "user", "content": "Weather in Paris for 3 days?"}]
PARAMS = GenerationParams(max_tokens=64, temperature=0.5, top_p=0.9, stop=("###",), seed=7)


def parsers_for(store: Path, tiny: str, production_model: str) -> OutputParsers:
    """The production entry's parser settings, bound to its tiny model's tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(store / TINY_MODELS[tiny])
    args = load_catalog("production").get(production_model).engine_args
    return OutputParsers({k: v for k, v in args.items() if k in PARSER_KEYS}, tokenizer)


def stream(parsers: OutputParsers, output: str, tools: list | None = TOOLS, tool_choice=None) -> AssistantMessage:
    """Feed ``output`` token by token through a fresh request's parser; gather what comes out.

    Each token is detokenized as vLLM's engine does for the request's sampling params: special
    tokens (Kimi's call markers) reach the parser only where the request keeps them.
    """
    tokenizer = parsers.tokenizer
    prompt_ids = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    turn = parsers.prepare(CHAT, tools, tool_choice, PARAMS)
    assert turn.parser is not None
    skip_special = turn.sampling.skip_special_tokens
    ids = tokenizer(output, add_special_tokens=False)["input_ids"]
    message = AssistantMessage()
    for n, token in enumerate(ids):
        text = tokenizer.decode([token], skip_special_tokens=skip_special)
        if chunk := turn.feed(text, [token], prompt_ids, finished=n == len(ids) - 1):
            message.add(chunk)
    return message


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("parser-store")
    build_tiny_store(store, ["qwen3", "phi3", "deepseek_v3"])
    return store


def test_qwen3_coder_xml_tool_calls_become_openai_calls(store: Path):
    parsers = parsers_for(store, "qwen3", "qwen3-coder")
    output = (
        "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n"
        "<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>"
    )
    message = stream(parsers, output).as_dict()
    assert message["content"].strip() == "Let me check."
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "days": 3}  # typed by the tool's schema


KIMI_CALL = (
    "Sure.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
    '{"city": "Oslo"}<|tool_call_end|><|tool_calls_section_end|>'
)


def test_kimi_k2_calls_keep_kimis_call_ids(store: Path):
    parsers = parsers_for(store, "deepseek_v3", "kimi-k2")
    message = stream(parsers, KIMI_CALL).as_dict()
    assert message["content"] == "Sure."
    (call,) = message["tool_calls"]
    assert (call["id"], call["function"]["name"]) == ("functions.get_weather:0", "get_weather")
    assert json.loads(call["function"]["arguments"]) == {"city": "Oslo"}


def test_tool_choice_none_leaves_a_call_in_the_content(store: Path):
    """With ``tool_choice: "none"`` a call the model writes anyway is answer text, as from ``vllm serve``:
    its name and arguments stay in the content; the special-token markers are dropped, as always
    when a request does not keep special tokens."""
    message = stream(parsers_for(store, "deepseek_v3", "kimi-k2"), KIMI_CALL, tool_choice="none")
    assert message.as_dict() == {"role": "assistant", "content": 'Sure.functions.get_weather:0{"city": "Oslo"}'}


def test_phi4_reasoning_is_split_from_the_answer(store: Path):
    parsers = parsers_for(store, "phi3", "phi-4-reasoning")
    message = stream(parsers, "<think>Two plus two is four.</think>The answer is 4.", tools=None)
    assert message.as_dict() == {
        "role": "assistant",
        "content": "The answer is 4.",
        "reasoning": "Two plus two is four.",
    }


def test_a_tokenizer_without_the_markers_fails_at_load_with_the_parser_named(store: Path):
    tokenizer = AutoTokenizer.from_pretrained(store / TINY_MODELS["deepseek_v3"])  # Kimi K2 has no <think>
    with pytest.raises(TypeError, match="--reasoning-parser deepseek_r1"):
        OutputParsers({"reasoning_parser": "deepseek_r1"}, tokenizer)


def test_sampling_follows_the_request_and_what_the_parser_needs(store: Path):
    from vllm.sampling_params import RequestOutputKind

    kimi = parsers_for(store, "deepseek_v3", "kimi-k2")
    auto = kimi.prepare(CHAT, TOOLS, None, PARAMS).sampling
    assert (auto.max_tokens, auto.temperature, auto.top_p, auto.stop, auto.seed) == (64, 0.5, 0.9, ["###"], 7)
    assert auto.output_kind == RequestOutputKind.DELTA
    assert auto.skip_special_tokens is False  # Kimi's call markers are special tokens the parser must see
    assert auto.structured_outputs is None  # auto: the model may answer in text
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        forced = kimi.prepare(CHAT, TOOLS, choice, PARAMS).sampling
        assert "get_weather" in forced.structured_outputs.structural_tag  # decoding is constrained to the call


def test_a_model_without_parsers_streams_plain_text(store: Path):
    tokenizer = AutoTokenizer.from_pretrained(store / TINY_MODELS["qwen3"])
    turn = OutputParsers({}, tokenizer).prepare(CHAT, None, None, PARAMS)
    assert turn.parser is None and turn.sampling.skip_special_tokens is True
    assert turn.feed("Hello", [1, 2], [3], finished=False) == TextChunk("Hello")

"""Tool calls and reasoning from parsed engine output, rendered the way OpenAI SDKs read them.

The chunks below are what vLLM's Qwen3-Coder tool parser and DeepSeek-R1 reasoning parser emit
for a streamed answer (see tests/test_vllm_parsing.py, which runs the real parsers): the first
piece of a call brings its id and name, later pieces bring argument text.
"""

from __future__ import annotations

import json

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from candle.api import responses
from candle.contracts import TextChunk, ToolCallDelta

STREAM = [
    TextChunk("", reasoning="The user wants "),
    TextChunk("", reasoning="weather in two cities."),
    TextChunk("Checking."),
    TextChunk("", tool_calls=(ToolCallDelta(0, id="call_a", name="get_weather"),)),
    TextChunk("", tool_calls=(ToolCallDelta(0, arguments='{"city": '),)),
    TextChunk("", tool_calls=(ToolCallDelta(0, arguments='"Oslo"}'),)),
    TextChunk("", tool_calls=(ToolCallDelta(1, id="call_b", name="get_weather", arguments='{"city": "Lima"}'),)),
    TextChunk("", "stop", prompt_tokens=30, completion_tokens=41),
]


def test_streamed_pieces_make_whole_tool_calls_and_finish_as_tool_calls():
    message = responses.AssistantMessage()
    for chunk in STREAM:
        message.add(chunk)
    body = responses.chat_completion("chatcmpl-1", "m", [message], 30, 41)

    parsed = ChatCompletion.model_validate(body)  # what the OpenAI SDK hands its caller
    choice = parsed.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    assert [(c.id, c.function.name) for c in choice.message.tool_calls] == [
        ("call_a", "get_weather"),
        ("call_b", "get_weather"),
    ]
    assert [json.loads(c.function.arguments) for c in choice.message.tool_calls] == [{"city": "Oslo"}, {"city": "Lima"}]
    assert body["choices"][0]["message"]["reasoning"] == "The user wants weather in two cities."


def test_stream_deltas_carry_reasoning_and_call_pieces_in_openai_shape():
    deltas = [responses.chat_delta(chunk) for chunk in STREAM]
    chunks = [ChatCompletionChunk.model_validate(responses.chat_chunk("chatcmpl-1", "m", 0, delta)) for delta in deltas]
    assert deltas[0] == {"reasoning": "The user wants "}
    assert deltas[2] == {"content": "Checking."}
    first = chunks[3].choices[0].delta.tool_calls[0]
    assert (first.index, first.id, first.type, first.function.name) == (0, "call_a", "function", "get_weather")
    assert first.function.arguments is None
    arguments = "".join(
        call.function.arguments or ""
        for chunk in chunks
        for call in chunk.choices[0].delta.tool_calls or ()
        if call.index == 0
    )
    assert json.loads(arguments) == {"city": "Oslo"}
    assert deltas[-1] == {}  # the closing chunk carries only the finish reason


def test_a_turn_without_calls_keeps_its_finish_reason_and_text():
    message = responses.AssistantMessage()
    for chunk in (TextChunk("Hello"), TextChunk(" there", "length", 3, 2)):
        message.add(chunk)
    assert message.finish_reason == "length"
    assert message.as_dict() == {"role": "assistant", "content": "Hello there"}
    assert responses.finish_reason("length", called_tools=True) == "length"  # cut short mid-call stays "length"


def test_a_call_without_an_id_gets_one():
    message = responses.AssistantMessage()
    message.add(TextChunk("", "stop", tool_calls=(ToolCallDelta(0, name="f", arguments="{}"),)))
    (call,) = message.as_dict()["tool_calls"]
    assert call["id"].startswith("call-") and call["function"] == {"name": "f", "arguments": "{}"}

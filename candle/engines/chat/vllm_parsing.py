"""vLLM's tool-call and reasoning parsers applied to a streamed generation (imported lazily).

The catalog names the parsers the way ``vllm serve`` flags do (``tool_call_parser: kimi_k2`` or
``qwen3_coder`` with ``enable_auto_tool_choice``; ``reasoning_parser: deepseek_r1`` for
Phi-4-reasoning). vLLM composes them into one ``Parser`` that splits each delta of raw model text
into answer content, reasoning and tool-call pieces; candle keeps one parser object per request,
as vLLM's own OpenAI server does, and turns its deltas into ``TextChunk`` fields. Sampling params,
for chat and completions alike, come from vLLM's OpenAI request models too, so candle samples as
``vllm serve`` would for the same request.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from candle.contracts import GenerationParams, TextChunk, ToolCallDelta

# engine_args keys that choose parsers: they configure candle's OpenAI layer, not vLLM's engine.
PARSER_KEYS = ("tool_call_parser", "reasoning_parser", "enable_auto_tool_choice")


def openai_fields(params: GenerationParams) -> dict[str, Any]:
    """``params`` as the fields of an OpenAI request to vLLM's server (chat and completions alike)."""
    return {
        "model": "candle",
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop) or None,
        "seed": params.seed,
        "response_format": params.response_format.as_openai(),  # vLLM's structured outputs (xgrammar)
    }


def delta_sampling(request: Any, params: GenerationParams) -> Any:
    """A vLLM OpenAI request's sampling params, as its own server makes them, streaming deltas."""
    from vllm.sampling_params import RequestOutputKind

    sampling = request.to_sampling_params(params.max_tokens, {})
    sampling.output_kind = RequestOutputKind.DELTA  # text and token ids new since the previous output
    return sampling


class OutputParsers:
    """The parsers a catalog entry asks for, bound to the model's tokenizer; ``None`` parts stay plain text.

    Building it checks the tokenizer has the markers the parsers need (vLLM raises otherwise), so a
    misconfigured model fails at load with the reason, not on its first request.
    """

    def __init__(self, engine_args: Mapping[str, Any], tokenizer: Any) -> None:
        from vllm.parser.parser_manager import ParserManager

        self.tokenizer = tokenizer
        self.parser_class = ParserManager.get_parser(
            tool_parser_name=engine_args.get("tool_call_parser"),
            reasoning_parser_name=engine_args.get("reasoning_parser"),
            enable_auto_tools=bool(engine_args.get("enable_auto_tool_choice")),
            tokenizer=tokenizer,
        )

    def prepare(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None,
        tool_choice: Any,
        params: GenerationParams,
    ) -> ChatTurn:
        """One chat request in vLLM's terms: its sampling params and (if the model has parsers) its parser.

        The request goes through the parser's ``adjust_request`` and ``to_sampling_params``, as in
        vLLM's own server: that keeps special tokens in the text where a parser reads them (Kimi's
        call markers) and constrains decoding to a call for ``tool_choice`` "required" or a named tool.
        """
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        fields: dict[str, Any] = {"messages": messages, "tools": tools, **openai_fields(params)}
        if tool_choice is not None:  # left out, vLLM applies OpenAI's default (auto with tools, else none)
            fields["tool_choice"] = tool_choice
        request = ChatCompletionRequest(**fields)
        parser = None
        if self.parser_class is not None:
            parser = self.parser_class(self.tokenizer, request.tools)
            request = parser.adjust_request(request)
        return ChatTurn(delta_sampling(request, params), parser, request)


class ChatTurn:
    """One request's sampling params, and its deltas fed through its vLLM parser (plain text without one)."""

    def __init__(self, sampling: Any, parser: Any, request: Any) -> None:
        self.sampling = sampling
        self.parser = parser
        self.request = request

    def feed(
        self, text: str, token_ids: Sequence[int], prompt_token_ids: Sequence[int], finished: bool
    ) -> TextChunk | None:
        """The content, reasoning and tool-call pieces in this delta; ``None`` if none (a parser may hold text back)."""
        if self.parser is None:
            return TextChunk(text) if text else None
        delta = self.parser.parse_delta(text, list(token_ids), self.request, list(prompt_token_ids), finished=finished)
        if delta is None:
            return None
        calls = tuple(
            ToolCallDelta(
                index=call.index,
                id=call.id,
                name=call.function.name if call.function else None,
                arguments=(call.function.arguments or "") if call.function else "",
            )
            for call in delta.tool_calls or ()
        )
        if not (delta.content or delta.reasoning or calls):
            return None
        return TextChunk(delta.content or "", reasoning=delta.reasoning or "", tool_calls=calls)

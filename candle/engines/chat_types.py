"""What chat engines take and stream back, kept free of torch so the gateway can import it cheaply."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of one tool call, streamed the way OpenAI does: id and name first, arguments in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True)
class TextChunk:
    """A piece of generated output; the last one carries the finish reason and token counts.

    ``text`` is answer content; ``reasoning`` and ``tool_calls`` are filled only by engines with
    output parsers (vLLM's reasoning and tool-call parsers), which split them out of the raw text.
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()

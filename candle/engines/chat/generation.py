"""Streamed text generation with transformers, shared by the text-to-text and vision engines.

``model.generate`` runs in its own thread and feeds a ``TextIteratorStreamer``; the caller iterates
text pieces as they decode. Stop strings are cut out of the stream (text that could begin one is
held back until it cannot), and closing the iterator early (a client went away) stops generation
at the next token instead of letting it run to ``max_tokens``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any, cast

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

from candle.contracts import GenerationParams, TextChunk

from ..errors import InvalidInput


class StopTrimmer:
    """Emits streamed text up to (not including) the first stop string."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        self.pending += text
        cut = min((i for i in (self.pending.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            emit, self.pending = self.pending[:cut], ""
            return emit
        hold = max((self._overlap(s) for s in self.stops), default=0)
        emit, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return emit

    def _overlap(self, stop: str) -> int:
        """Length of the longest tail of the pending text that is a prefix of ``stop``."""
        for size in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if stop.startswith(self.pending[-size:]):
                return size
        return 0

    def flush(self) -> str:
        emit, self.pending = ("" if self.stopped else self.pending), ""
        return emit


class _Cancelled(StoppingCriteria):
    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        stop = torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)
        return cast(torch.BoolTensor, stop)  # a bool tensor; torch types it as a plain Tensor


def context_window(model: Any) -> int | None:
    """How many positions the model was built for (a vision model's language half for LLaVA)."""
    config = getattr(model.config, "text_config", None) or model.config
    return getattr(config, "max_position_embeddings", None)


def fit_to_context(params: GenerationParams, prompt_tokens: int, window: int | None) -> GenerationParams:
    """``params`` whose prompt and completion fit ``window``, as vLLM and OpenAI hold them: past it a
    model writes from positions it never learned, so a client's own ``max_tokens`` is refused."""
    if window is None or prompt_tokens + params.max_tokens <= window:
        return params
    if prompt_tokens < window and not params.max_tokens_requested:
        return replace(params, max_tokens=window - prompt_tokens)
    raise InvalidInput(
        f"this model's context holds {window} tokens, but the request needs {prompt_tokens + params.max_tokens} "
        f"({prompt_tokens} in the prompt, {params.max_tokens} to generate); shorten the prompt or lower max_tokens"
    )


def stream_generate(
    model: Any,
    tokenizer: Any,
    inputs: Mapping[str, torch.Tensor],
    params: GenerationParams,
    lock: threading.Lock,
    constraint: LogitsProcessor | None = None,
) -> Iterator[TextChunk]:
    """Generate from ``inputs`` (already tokenized), yielding text as it decodes.

    ``lock`` serialises generation on one replica: on CPU, two concurrent ``generate`` calls only
    slow each other down, and a seed must apply to one request's sampling alone. ``constraint``
    masks what may come next (a response format's grammar).
    """
    prompt_tokens = int(inputs["input_ids"].shape[-1])
    params = fit_to_context(params, prompt_tokens, context_window(model))
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    cancelled = threading.Event()
    sampling = params.temperature > 0
    kwargs: dict[str, Any] = {
        **inputs,
        "max_new_tokens": params.max_tokens,
        "streamer": streamer,
        "do_sample": sampling,
        "stopping_criteria": StoppingCriteriaList([_Cancelled(cancelled)]),
        "pad_token_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    }
    if sampling:
        kwargs.update(temperature=params.temperature, top_p=params.top_p)
    if constraint is not None:
        kwargs["logits_processor"] = LogitsProcessorList([constraint])
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            with lock, torch.inference_mode():
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                outcome["sequences"] = model.generate(**kwargs)
        except BaseException as e:  # surfaced to the caller below, after the stream ends
            outcome["error"] = e
            streamer.end()

    worker = threading.Thread(target=run, name="candle-generate", daemon=True)
    worker.start()
    trimmer = StopTrimmer(params.stop)
    try:
        for piece in streamer:
            if text := trimmer.feed(piece):
                yield TextChunk(text)
            if trimmer.stopped:
                cancelled.set()
    finally:
        cancelled.set()  # no-op once generation ended; stops it at the next token if the caller left early
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    completion_tokens = int(outcome["sequences"].shape[-1]) - prompt_tokens
    finish = "length" if completion_tokens >= params.max_tokens and not trimmer.stopped else "stop"
    yield TextChunk(trimmer.flush(), finish, prompt_tokens, completion_tokens)

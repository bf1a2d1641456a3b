"""Constrained decoding for the transformers engines: a response format as an xgrammar logits processor.

xgrammar (the grammar backend vLLM uses) masks, at every step, the tokens that cannot continue
valid output, so even a random model answers JSON valid against the client's schema. Once the JSON
is complete only the model's end tokens remain allowed, which ends generation there.
"""

from __future__ import annotations

import re
from typing import Any

import xgrammar as xgr
from xgrammar.contrib.hf import LogitsProcessor

from candle.contracts import ResponseFormat

from .errors import InvalidInput

JSON_OBJECT = '{"type": "object"}'
# xgrammar's errors start with a timestamp and its C++ source line; the client needs the reason.
_NOISE = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


def _end_tokens(model: Any, tokenizer: Any) -> list[int]:
    """The tokens ``generate`` stops on, so the grammar allows exactly those once the JSON is done."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or ())


class Grammars:
    """Compiles response formats against one model's vocabulary (built once per engine)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        vocab_size = model.config.get_text_config().vocab_size  # may exceed the tokenizer's (padding)
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=_end_tokens(model, tokenizer)
        )
        self.compiler = xgr.GrammarCompiler(info)

    def processor(self, fmt: ResponseFormat) -> LogitsProcessor | None:
        """A fresh logits processor for one request (xgrammar's are single-use), or ``None`` for text."""
        if fmt.type == "text":
            return None
        schema = JSON_OBJECT if fmt.type == "json_object" else fmt.schema or JSON_OBJECT
        try:
            # No free whitespace: a model is otherwise free to pad forever between tokens.
            compiled = self.compiler.compile_json_schema(schema, any_whitespace=False)
        except RuntimeError as e:
            reason = _NOISE.sub("", str(e).strip()).splitlines()[0]
            raise InvalidInput(f"response_format's json_schema is not supported: {reason}") from None
        return LogitsProcessor(compiled)

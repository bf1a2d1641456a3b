"""Constrained decoding for the transformers engines: a response format as an xgrammar logits processor.

xgrammar (the grammar backend vLLM uses) masks, at every step, the tokens that cannot continue
valid output, so even a random model answers JSON valid against the client's schema. Once the JSON
is complete only the model's end tokens remain allowed, which ends generation there.

Compiling a schema is the risk: it is C++ that nothing interrupts once it starts, and a small
schema can take minutes (the gateway bounds a schema's size and shape first, but no such bound
prices every construct). So a new schema is first compiled in a child process, killed once the
model's ``limits.schema_compile_timeout_s`` has passed (the request gets a 400 naming the limit);
only a schema that compiled there in time is compiled again here for decoding (handing the result
over would cost more than compiling it: tens of MB of token masks for a real vocabulary). Both run
where the engine's stream is first read, the replica's worker thread, never its event loop
(xgrammar releases the GIL while it compiles). Compiled grammars are kept by schema, so a repeated
schema costs nothing.
"""

from __future__ import annotations

import functools
import multiprocessing
import re
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

import xgrammar as xgr
from xgrammar.contrib.hf import LogitsProcessor

from candle.contracts import ResponseFormat

from ..errors import InvalidInput

JSON_OBJECT = '{"type": "object"}'
# xgrammar's errors start with a timestamp and its C++ source line; the client needs the reason.
_NOISE = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")
CACHED_GRAMMARS = 64
# The compiling process imports xgrammar (and with it torch): seconds on a busy node, not the schema's fault.
STARTUP_TIMEOUT_S = 120.0


def _end_tokens(model: Any, tokenizer: Any) -> list[int]:
    """The tokens ``generate`` stops on, so the grammar allows exactly those once the JSON is done."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return [eos] if isinstance(eos, int) else list(eos or ())


def compile_schema(compiler: xgr.GrammarCompiler, schema: str) -> xgr.CompiledGrammar:
    """``schema`` compiled, or ``InvalidInput`` with xgrammar's reason."""
    try:
        # No free whitespace: a model is otherwise free to pad forever between tokens.
        return compiler.compile_json_schema(schema, any_whitespace=False)
    except RuntimeError as e:
        reason = _NOISE.sub("", str(e).strip()).splitlines()[0]
        raise InvalidInput(f"response_format's json_schema is not supported: {reason}") from None


class Grammars:
    """Compiles response formats against one model's vocabulary (built once per engine)."""

    def __init__(self, model: Any, tokenizer: Any, compile_timeout_s: float) -> None:
        vocab_size = model.config.get_text_config().vocab_size  # may exceed the tokenizer's (padding)
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=_end_tokens(model, tokenizer)
        )
        # The cache below keeps what this one compiles (xgrammar's own cache would grow without bound).
        self.compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        self.trial = TrialCompiler(info.serialize_json(), compile_timeout_s)
        self._compiled = functools.lru_cache(maxsize=CACHED_GRAMMARS)(self._compile)

    def processor(self, fmt: ResponseFormat) -> LogitsProcessor | None:
        """A fresh logits processor for one request (xgrammar's are single-use), or ``None`` for text.
        Blocking for as long as a new schema compiles: call it off the event loop."""
        if fmt.type == "text":
            return None
        schema = JSON_OBJECT if fmt.type == "json_object" else fmt.schema or JSON_OBJECT
        return LogitsProcessor(self._compiled(schema))

    def _compile(self, schema: str) -> xgr.CompiledGrammar:
        self.trial.compile(schema)
        return compile_schema(self.compiler, schema)


class TrialCompiler:
    """Compiles schemas in a child process, killed (and replaced on next use) once one compile takes
    longer than ``timeout_s``: the only way to stop xgrammar mid-compile. One compile at a time."""

    def __init__(self, tokenizer_info: str, timeout_s: float) -> None:
        self.tokenizer_info = tokenizer_info
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._process: BaseProcess | None = None
        self._conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        """The compiling process's id while one runs: which process a schema's compile costs."""
        return self._process.pid if self._process is not None and self._process.is_alive() else None

    def compile(self, schema: str) -> None:
        """Return once ``schema`` compiled within the budget, else raise ``InvalidInput``."""
        with self._lock:
            for _ in range(2):
                conn = self._connection()
                try:
                    conn.send(schema)
                    compiled_in_time = conn.poll(self.timeout_s)
                    error = conn.recv() if compiled_in_time else None
                    break
                # It died: killed from outside (out of memory) before or while this schema compiled, or by
                # this schema. A fresh process tries once more, and only a second death blames the schema.
                except (EOFError, OSError):
                    self._stop()
            else:
                raise InvalidInput("response_format's json_schema crashed the grammar compiler")
            if not compiled_in_time:
                self._stop()
                raise InvalidInput(
                    f"response_format's json_schema did not compile within {self.timeout_s:g}s (this model's "
                    "limits.schema_compile_timeout_s); simplify it"
                )
        if error is not None:
            raise InvalidInput(error)

    def _connection(self) -> Connection:
        if self._process is not None and self._conn is not None and self._process.is_alive():
            return self._conn
        self._stop()
        # spawn: a fork would copy the replica's threads' locks mid-use; the child imports only what it needs.
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=_serve, args=(theirs, self.tokenizer_info), name="candle-grammar", daemon=True)
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        try:
            started = ours.poll(STARTUP_TIMEOUT_S) and ours.recv() == "ready"
        except (EOFError, OSError):
            started = False
        if not started:
            self._stop()
            raise RuntimeError(f"the grammar compiling process did not start within {STARTUP_TIMEOUT_S:g}s")
        return ours

    def _stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.join()
        if self._conn is not None:
            self._conn.close()
        self._process = self._conn = None


def _serve(conn: Connection, tokenizer_info: str) -> None:
    """The compiling process: a schema in, ``None`` (it compiles) or the reason it does not out, until
    the pipe closes (the replica is gone)."""
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.deserialize_json(tokenizer_info), cache_enabled=False)
    conn.send("ready")
    while True:
        try:
            schema = conn.recv()
        except EOFError:
            return
        try:
            compile_schema(compiler, schema)
        except InvalidInput as e:
            conn.send(str(e))
        else:
            conn.send(None)

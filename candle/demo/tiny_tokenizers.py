"""The tokenizers of the tiny models, trained on a built-in corpus, so nothing is downloaded.

Shared by the random architectures (:mod:`candle.demo.tiny_models`) and the remote-code look-alikes
(:mod:`candle.demo.remote_code_models`), which both build on it and on nothing of each other.
Changing the corpus changes every tokenizer, and so every tiny model.
"""

from __future__ import annotations

import json
import math
import string
from collections import Counter
from typing import Any

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    T5Tokenizer,
    XLMRobertaTokenizer,
)

LM_VOCAB_SIZE = 512

CLIP_VOCAB_SIZE = 1024  # 2 specials + 256 bytes + 256 word-final bytes + merges
MAX_POSITIONS = 2048
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512

BOS, EOS, PAD = "<|startoftext|>", "<|im_end|>", "<|endoftext|>"
IM_START = "<|im_start|>"

# A little of everything the tests and demos send (chat, code, captions, numbers), so the trained
# tokenizers split common words into few tokens. Changing it changes every tokenizer.
CORPUS = """\
You are a helpful assistant. Answer the question and explain your reasoning step by step.
Hello! How can I help you today? Please tell me more about what you need.
The quick brown fox jumps over the lazy dog while the farmer watches from the gate.
A cat sits on the mat. A kitten rests on a rug. Two dogs play with a red ball in the park.
What is in the picture? The picture shows a red apple on a wooden table next to a glass of water.
A photo of a mountain lake at sunset, with snow on the peaks and a small boat near the shore.
An astronaut riding a horse on the moon, digital art, highly detailed, soft lighting.
Quarterly tax report spreadsheet with revenue, costs and profit for each region and month.
The meeting is on Monday at 10:30 in room 4B; bring the slides and the budget numbers.
def fibonacci(n: int) -> int:
    if n < 2:
        return n
    return fibonacci(n - 1) + fibonacci(n - 2)
for index, value in enumerate(values):
    print(f"{index}: {value}")
class Server:
    def __init__(self, host: str = "127.0.0.1", port: int = 8000) -> None:
        self.host = host
        self.port = port
import json, os, sys
result = json.loads(response.text)["choices"][0]["message"]["content"]
SELECT name, count(*) FROM users WHERE created_at > '2024-01-01' GROUP BY name ORDER BY 2 DESC;
The model reads the prompt, thinks about the problem, and writes an answer one token at a time.
Large language models are trained on text from books, articles, code and conversations.
Ray Serve runs deployments on a cluster; each replica loads the weights once and serves requests.
Solve for x: 3x + 7 = 22, so 3x = 15 and x = 5. The answer is 5.
The sum of the first ten numbers is 55, and the product of 6 and 7 is 42.
Thank you! You're welcome. Goodbye, and have a nice day.
Il fait beau aujourd'hui. Das Wetter ist schön. El gato duerme en la casa.
Weather: sunny, 24 degrees, light wind from the west; tomorrow rain is likely in the afternoon.
Images are made of pixels; each pixel has red, green and blue values between 0 and 255.
A diffusion model starts from noise and removes a little of it at every step until an image appears.
"""

# ChatML over string content or OpenAI-style parts; $image renders an image part (nothing for text-only models).
# Tools, when given, go into a system block first, as Qwen's templates put them.
CHAT_TEMPLATE = string.Template("""\
{{- bos_token -}}
{%- if tools -%}
    {{- '<|im_start|>system\\n# Tools\\n<tools>' -}}
    {%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}
    {{- '\\n</tools><|im_end|>\\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] -}}
    {%- else -%}
        {%- for part in message['content'] -%}
            {%- if part['type'] == 'text' -%}
                {{- part['text'] -}}
            {%- elif part['type'] in ('image', 'image_url') -%}
                {{- '$image' -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {%- for call in message['tool_calls'] or [] -%}
        {{- '<tool_call>\\n<function=' + call['function']['name'] + '>\\n' -}}
        {%- for key, value in call['function']['arguments'] | items -%}
            {{- '<parameter=' + key + '>' + (value | tojson) + '</parameter>\\n' -}}
        {%- endfor -%}
        {{- '</function>\\n</tool_call>' -}}
    {%- endfor -%}
    {{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
""")


# BPE training is reproducible (integer pair counts, ties broken by token id) as long as every symbol has
# its id before training starts.


def byte_level_bpe(specials: list[str]) -> Tokenizer:
    """A byte-level BPE of LM_VOCAB_SIZE trained on CORPUS, ``specials`` first in the vocab."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=LM_VOCAB_SIZE,
        special_tokens=specials,
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS.splitlines(), trainer)
    return backend


def chat_tokenizer(image_token: str | None = None, markers: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A byte-level BPE (any text encodes, nothing maps to unk) with ChatML specials (and the model's
    parser markers) first in the vocab."""
    backend = byte_level_bpe([PAD, BOS, IM_START, EOS, *([image_token] if image_token else []), *markers])
    extra = {"image_token": image_token} if image_token else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=extra,
        chat_template=CHAT_TEMPLATE.substitute(image=f"{image_token}\\n" if image_token else ""),
        model_max_length=MAX_POSITIONS,
    )


def clip_tokenizer() -> CLIPTokenizer:
    """Trained through CLIPTokenizer's own normalizer and pre-tokenizer, because CLIPTokenizer rebuilds
    that pipeline around the saved vocab and merges when it loads.

    Every byte with the end-of-word suffix is listed up front, as in CLIP's vocab: any word can end,
    and the trainer no longer numbers those symbols in (random) hash-map order as it meets them.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = CLIPTokenizer().backend_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=CLIP_VOCAB_SIZE,
        special_tokens=["<|startoftext|>", "<|endoftext|>", *(char + "</w>" for char in alphabet)],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS.splitlines(), trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(merge) for merge in model["merges"]]
    # transformers hints merges as strings; its tokenizers take (left, right) pairs, as trained here.
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=CLIP_MAX_LENGTH)  # type: ignore[arg-type]


def _unigram_pieces() -> list[tuple[str, float]]:
    """A Unigram vocab of the corpus's words and characters scored by frequency; computed rather than
    trained because the Unigram trainer's parallel float sums are not reproducible bit for bit."""
    counts: Counter[str] = Counter()
    for word in CORPUS.split():
        counts["▁" + word] += 1
        counts.update(word)
    counts["▁"] = max(counts.values())  # cheap word starts, so unknown words fall back to characters
    total = sum(counts.values())
    return [(piece, math.log(count / total)) for piece, count in sorted(counts.items())]


def t5_tokenizer() -> T5Tokenizer:
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]  # T5's fixed ids 0, 1, 2
    return T5Tokenizer(vocab=specials + _unigram_pieces(), extra_ids=0, model_max_length=T5_MAX_LENGTH)


def xlm_roberta_tokenizer(max_length: int) -> XLMRobertaTokenizer:
    """XLM-R's sentencepiece layout on the corpus's Unigram vocab: ``<s> <pad> </s> <unk>`` at ids 0-3
    (the tokenizer's fixed unk id is 3) and ``<mask>`` last, as in the real vocab; pairs encode as
    ``<s> A </s></s> B </s>``."""
    specials = [("<s>", 0.0), ("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = [*specials, *_unigram_pieces(), ("<mask>", 0.0)]
    return XLMRobertaTokenizer(vocab=vocab, model_max_length=max_length)


def special_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }

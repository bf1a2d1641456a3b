"""What in a catalog entry looks like a secret: a variable's name, or a value's credentials or shape.

A model's ``runtime_env`` is shown by Ray's dashboard and ``serve status``, so a secret there is a
secret leaked. The check reads names word by word (``DB_PASS``, ``GITHUB_PAT``, ``openaiApiKey``),
not by substring, so ``TOKENIZERS_PARALLELISM`` or ``BYPASS_CACHE`` stay allowed. A value is a
secret where a URL in it carries credentials (``https://user:token@host``, ``?token=...``) or it
has the shape of a well-known token. Callers say *where* the secret is, never what it is.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl

# Words that end a secret's name: ``GITHUB_TOKEN``, ``APIKEY``, ``DBPASSWORD``, ``OAUTH``.
_SECRET_SUFFIXES = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "PWD", "CREDENTIAL", "AUTH", "SIGNATURE")
# Words that are a secret's name only as a whole word: ``DB_PASS`` but not ``BYPASS``, ``GH_PAT`` but not ``PATH``.
_SECRET_WORDS = frozenset({"PASS", "PAT", "SIG", "COOKIE"})
_WORD = re.compile(r"[A-Z]+[a-z]*|[a-z]+|[0-9]+")  # camelCase, snake_case, kebab-case and digits
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:?//[^\s'\"<>]*")
_USERINFO = re.compile(r"^[^/]*//[^/?#\s]*@")  # anything before the host's '@' is a user or a token
# Token formats that announce themselves (Hugging Face, GitHub, GitLab, OpenAI-style, Slack, AWS).
_TOKEN_SHAPES = re.compile(
    r"\b(?:hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_\w{30,}|glpat-[\w-]{20,}"
    r"|sk-[\w-]{20,}|xox[abprs]-[\w-]{10,}|AKIA[0-9A-Z]{16})"
)


def is_secret_name(name: str) -> bool:
    """Whether a variable or query parameter called ``name`` holds a secret, by its words."""
    words = [w.upper() for w in _WORD.findall(name) if not w.isdigit()]
    singular = [w.removesuffix("S") for w in words]  # TOKENS, KEYS, CREDENTIALS
    return any(w in _SECRET_WORDS for w in words) or any(w.endswith(_SECRET_SUFFIXES) for w in words + singular)


def secret_in_value(text: str) -> str | None:
    """What kind of secret ``text`` carries (never the secret itself), or None."""
    for url in _URL.findall(text):
        if _USERINFO.match(url):
            return "a URL with credentials"
        query = url.partition("?")[2].partition("#")[0]
        if any(is_secret_name(name) for name, _ in parse_qsl(query, keep_blank_values=True)):
            return "a URL with credentials in its query"
    if _TOKEN_SHAPES.search(text):
        return "what looks like a token"
    return None

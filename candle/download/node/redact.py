"""URLs as they may appear in a message or a log line: without the credentials a mirror URL can carry.

``HF_ENDPOINT`` may hold ``user:token@`` (a private mirror) and a signed URL may hold a token in its
query; both would otherwise travel into errors that reach ``/v1/models``, ``candle status`` and logs.
The HTTP client under huggingface_hub logs every request URL at INFO, and huggingface_hub logs the
URL of a failed transfer: ``redact_logged_urls`` filters those loggers' records too.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"
_SECRET_PARAM = re.compile(r"token|key|secret|passw|pwd|auth|sig|credential|session", re.IGNORECASE)
_USERINFO = re.compile(r"//[^/?#]*@")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
# Loggers that put request URLs in their records (a logger's filters see only its own records).
URL_LOGGERS = ("httpx2", "huggingface_hub.file_download", "huggingface_hub.utils._http")


def _query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        name, sep, _ = pair.partition("=")
        pairs.append(f"{name}={MASK}" if sep and _SECRET_PARAM.search(unquote(name)) else pair)
    return "&".join(pairs)


def redact_url(url: str) -> str:
    """``url`` without its userinfo, and with the values of token-like query parameters masked."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: still drop anything that looks like userinfo
        return _USERINFO.sub("//", url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, _query(parts.query), parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted."""
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)


class RedactUrls(logging.Filter):
    """Rewrites a record whose message holds a URL with credentials before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed call: leave it to the handler's error reporting
            return True
        redacted = redact_text(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


def redact_logged_urls() -> None:
    """Attach ``RedactUrls`` to the loggers that log request URLs (once per process)."""
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactUrls) for f in logger.filters):
            logger.addFilter(RedactUrls())

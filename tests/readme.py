"""The README's code blocks, read the same way by every test that runs them."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def commands() -> list[str]:
    """Every command of the README's bash blocks: continuation lines joined, comments dropped."""
    found = []
    for block in code_blocks("bash"):
        for command in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", command).strip()
            if command:
                found.append(re.sub(r"\s+", " ", command))
    return found

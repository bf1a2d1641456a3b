"""The README is a front page: short, and every command in it is run by a test, the demo or CI.

``make demo`` is what tests/test_demo.py runs (``candle demo``), which also sends the README's first
requests (its curl commands and its Python) to the demo; ``make test`` is what CI runs; the Serve
config command is run here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.readme import README, commands

ROOT = README.parent
SERVE_CONFIG = "python -m candle.serve_config production > serve_config.yaml"


def recipe(target: str) -> str:
    match = re.search(rf"^{target}:.*\n((?:\t.*\n|#.*\n)+)", (ROOT / "Makefile").read_text(), flags=re.M)
    assert match, f"no make target {target}"
    return match[1]


def test_the_readme_stays_under_a_thousand_words() -> None:
    assert len(README.read_text().split()) < 1000


def test_every_command_in_the_readme_is_run_by_a_test_the_demo_or_ci() -> None:
    found = commands()
    curls = [c for c in found if c.startswith("curl ")]
    assert curls, "tests/test_demo.py sends these to the demo"
    assert [c for c in found if not c.startswith("curl ")] == ["make demo", "make test", SERVE_CONFIG]
    assert "$(BIN)/candle demo" in recipe("demo")  # what test_demo.py runs
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "$(MAKE) lint typecheck" in recipe("test")


def test_the_readme_s_serve_config_command_writes_the_committed_config(tmp_path: Path) -> None:
    """The command as written, with this venv's ``python`` first on the PATH, as an activated venv has it."""
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    subprocess.run(
        ["bash", "-c", SERVE_CONFIG], cwd=tmp_path, check=True, env={**os.environ, "PATH": path}, timeout=120
    )
    assert (tmp_path / "serve_config.yaml").read_text() == (ROOT / "serve_config.yaml").read_text()


def test_every_link_of_the_readme_and_the_docs_leads_to_a_file() -> None:
    pages = [README, *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
    linked = set(re.findall(r"\]\(docs/([^)]+)\)", README.read_text()))
    assert linked == {p.name for p in (ROOT / "docs").glob("*.md")}, "every page of docs/ is linked from the README"

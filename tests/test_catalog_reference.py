"""docs/catalog.md is generated from the catalog schema (``candle.catalog.reference``) and stays so."""

from __future__ import annotations

from pathlib import Path

import pytest

from candle.catalog.reference import SECTIONS, render

PAGE = Path(__file__).resolve().parents[1] / "docs" / "catalog.md"


def test_the_committed_reference_is_what_the_schema_says() -> None:
    assert PAGE.read_text() == render(), (
        "docs/catalog.md is out of date: python -m candle.catalog.reference > docs/catalog.md"
    )


@pytest.mark.parametrize("model", SECTIONS, ids=lambda m: m.__name__)
def test_every_field_says_what_it_means(model: type) -> None:
    undescribed = [name for name, field in model.model_fields.items() if not field.description]
    assert undescribed == [], f"give {model.__name__}'s fields a docstring: {undescribed}"


def test_the_reference_lists_every_field_with_its_default() -> None:
    page = render()
    assert "| `max_tokens` | int | `4096` |" in page
    assert "| `revision` | str \\| None | none |" in page
    assert "| `text-embedding` | `sentence-transformers` |" in page

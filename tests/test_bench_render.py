"""Every benchmark page renders from its saved results alone (no measuring) and shows its index headline's figures.

A fresh clone has docs/results/*.json but none of the runs' caches, so a wording change must be renderable from the
JSON; and docs/index.md quotes each page's headline, so the numbers it quotes must be on the page.
"""

from __future__ import annotations

import importlib
import re
import shutil

import pytest

from bench import common
from bench.__main__ import BENCHMARKS

NUMBER = re.compile(r"\d[\d,]*\.\d+")


def _values(text: str) -> list[tuple[float, int]]:
    """Every decimal number in ``text`` with its count of decimals (thousands separators dropped)."""
    return [(float(m.replace(",", "")), len(m.split(".")[1])) for m in NUMBER.findall(text)]


def _shown(value: float, decimals: int, page: list[tuple[float, int]]) -> bool:
    """Whether the page shows ``value`` at least as precisely as the headline does: some figure on the page, once
    both roundings are allowed for, can be the same number."""
    return any(d >= decimals and abs(p - value) <= 0.5 * 10.0**-decimals + 0.5 * 10.0**-d + 1e-9 for p, d in page)


@pytest.fixture
def docs_copy(tmp_path, monkeypatch):
    """A copy of docs/ that renders write into (pages and figures), so the test leaves the repository alone."""
    docs = tmp_path / "docs"
    shutil.copytree(common.DOCS, docs)
    monkeypatch.setattr(common, "DOCS", docs)
    return docs


@pytest.mark.parametrize("name", BENCHMARKS)
def test_page_renders_from_saved_json_with_its_headline_figures(name, docs_copy, monkeypatch):
    module = importlib.import_module(f"bench.{name}")
    for attr, path in (("DOCS", docs_copy), ("FIGURES", docs_copy / "figures")):
        if hasattr(module, attr):
            monkeypatch.setattr(module, attr, path)
    bench = module.BENCH
    results = common.load_results(bench.name)
    try:
        body = bench.render(results)
    except KeyError as exc:
        pytest.fail(f"docs/results/{bench.name}.json predates bench/{name}.py's render (no {exc}): rerun it")
    assert bench.headline is not None, f"bench/{name}.py gives no headline for docs/index.md"
    headline = bench.headline(results)
    figures = _values(headline)
    assert figures, f"{name}'s headline quotes no figure: {headline!r}"
    page = _values(body)
    missing = [v for v, d in figures if not _shown(v, d, page)]
    assert not missing, f"{name}: headline figures {missing} are not on the page ({headline!r})"


def test_render_writes_the_page_under_docs_with_the_saved_stamp(docs_copy):
    bench = importlib.import_module("bench.recipe").BENCH
    results = common.load_results(bench.name)
    page = bench.write_page(results)
    assert page.parent == docs_copy
    assert f"Measured {results['measured_at']} on {results['machine']}" in page.read_text()

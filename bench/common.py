"""What every benchmark shares: where the data is, and one way to turn a measurement into a page.

The pattern (every benchmark follows it; :data:`bench.__main__.BENCHMARKS` lists them):

* ``measure(args) -> dict`` runs the product's code path and returns JSON-able results, nothing else (no prose);
* ``render(results) -> str`` builds the markdown body (and any figure) from those results alone;
* ``headline(results) -> str``: the one line docs/index.md shows for the page (bench/index.py);
* the module ends with ``BENCH = Benchmark(name, title, measure, render, parser, headline=headline)`` and
  ``if __name__ == "__main__": BENCH.main()``.

``python -m bench.NAME`` measures, saves ``docs/results/NAME.json`` (stamped with the time and machine) and renders
``docs/NAME.md``; ``python -m bench.NAME --render`` only renders again from the saved JSON (a wording change needs no
rerun); ``python -m bench --render`` renders every converted page (:data:`bench.__main__.BENCHMARKS`) and
docs/index.md.
A superseded page keeps its benchmark but renders under ``docs/archive/`` with a line naming its replacement
(``Benchmark(..., superseded_by=...)``).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        sys.exit(f"benchmark needs {path} (the real station records in ../shared/data); it is missing")
    return path


def machine() -> str:
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()}), torch {torch.__version__}"


def markdown_table(headers: list[str], rows: list[list]) -> str:
    def fmt(v) -> str:
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:,.0f}"
        if isinstance(v, int):
            return f"{v:,}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, title: str, body: str, data: dict) -> Path:
    """Write docs/NAME.md (human) and docs/results/NAME.json (machine) for one benchmark run."""
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    DOCS.mkdir(exist_ok=True)
    (DOCS / "results").mkdir(exist_ok=True)
    md = DOCS / f"{name}.md"
    md.write_text(f"# {title}\n\nMeasured {stamp} on {machine()} by `bench/{name}.py`.\n\n{body.strip()}\n")
    (DOCS / "results" / f"{name}.json").write_bytes(
        orjson.dumps({"measured_at": stamp, "machine": machine(), **data}, option=orjson.OPT_INDENT_2)
    )
    return md


def save_results(name: str, data: dict) -> dict:
    """Stamp ``data`` with the time and machine and write docs/results/NAME.json; the stamped results."""
    stamped = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(), **data}
    (DOCS / "results").mkdir(parents=True, exist_ok=True)
    (DOCS / "results" / f"{name}.json").write_bytes(orjson.dumps(stamped, option=orjson.OPT_INDENT_2))
    return stamped


def load_results(name: str) -> dict:
    path = DOCS / "results" / f"{name}.json"
    if not path.exists():
        sys.exit(f"no saved results {path}: run `python -m bench.{name}` first")
    return orjson.loads(path.read_bytes())


@dataclass(frozen=True)
class Benchmark:
    name: str  # docs/NAME.md, docs/results/NAME.json
    title: str
    measure: Callable[[argparse.Namespace], dict]
    render: Callable[[dict], str]
    parser: argparse.ArgumentParser
    script: str | None = None  # bench/SCRIPT.py when it is not bench/NAME.py
    superseded_by: str | None = None  # "docs/x.md: why" for a page kept under docs/archive/
    headline: Callable[[dict], str] | None = None  # one line of the results for docs/index.md

    @property
    def page(self) -> Path:
        return DOCS / "archive" / f"{self.name}.md" if self.superseded_by else DOCS / f"{self.name}.md"

    def write_page(self, results: dict) -> Path:
        """docs/NAME.md from saved results alone."""
        header = f"# {self.title}\n\n"
        if self.superseded_by:
            header += f"> Superseded by {self.superseded_by}. Kept for the record.\n\n"
        header += (f"Measured {results['measured_at']} on {results['machine']} by "
                   f"`bench/{self.script or self.name}.py`.\n\n")
        self.page.parent.mkdir(parents=True, exist_ok=True)
        self.page.write_text(header + self.render(results).strip() + "\n")
        return self.page

    def main(self, argv: list[str] | None = None) -> None:
        self.parser.add_argument("--render", action="store_true",
                                 help=f"only rewrite the page from docs/results/{self.name}.json (no measuring)")
        args = self.parser.parse_args(argv)
        results = load_results(self.name) if args.render else save_results(self.name, self.measure(args))
        print(f"wrote {self.write_page(results).relative_to(ROOT)}")

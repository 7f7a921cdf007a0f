"""Helpers shared by the benchmarks: where the data is, and writing results into docs/."""

from __future__ import annotations

import os
import platform
import sys
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

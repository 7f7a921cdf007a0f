"""``python -m bench --render``: rewrite every converted benchmark page from its saved JSON (no measuring).

Each benchmark measures on its own (``python -m bench.NAME``; see bench/common.py for the pattern)."""

from __future__ import annotations

import argparse
import importlib
import sys

from bench import index
from bench.common import ROOT, load_results

# Benchmarks following bench/common.py's measure/render pattern, in the order `make bench` runs them.
BENCHMARKS = ["accuracy_floor", "seed_table", "long_sequence", "extra_data", "tune", "recipe", "ingest", "forecast_batch",
              "retrain_latency", "transfer", "lifecycle_transfer", "loso"]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--render", action="store_true", required=True, help="rewrite every page from its JSON")
    p.parse_args()
    stale = []
    for name in BENCHMARKS:
        bench = importlib.import_module(f"bench.{name}").BENCH
        try:
            print(f"wrote {bench.write_page(load_results(bench.name)).relative_to(ROOT)}")
        except (KeyError, TypeError) as exc:  # results saved by an older version of the benchmark
            stale.append(name)
            print(f"skipped {bench.page.relative_to(ROOT)}: docs/results/{bench.name}.json predates its render "
                  f"(no {exc}); rerun `python -m bench.{name}`", file=sys.stderr)
    print(f"wrote {index.write().relative_to(ROOT)}")
    if stale:
        sys.exit(f"{len(stale)} page(s) left as they were: {', '.join(stale)}")

if __name__ == "__main__":
    main()

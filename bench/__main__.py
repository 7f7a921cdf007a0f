"""``python -m bench --render``: rewrite every benchmark page from its saved JSON (no measuring).

Each benchmark measures on its own (``python -m bench.NAME``; see bench/common.py for the pattern)."""

from __future__ import annotations

import argparse
import importlib
import sys

from bench import index
from bench.common import ROOT, load_results

# Every benchmark (bench/common.py's measure/render pattern): those `make bench` runs, in its order, then the rest.
BENCHMARKS = ["seed_table", "accuracy_floor", "long_sequence", "transfer", "ingest", "forecast_batch",
              "retrain_latency", "lifecycle_transfer", "loso", "recipe", "extra_data", "tune"]


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

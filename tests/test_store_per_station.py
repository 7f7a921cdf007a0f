"""The per-station queries a restart rebuild uses, on both engines (stations caught up unevenly)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.store import Store
from tests.test_store import store, url  # noqa: F401


def _forecasts(station: str, issues: list[int], horizons: int = 3, step: int = 3600) -> pd.DataFrame:
    h = np.tile(np.arange(1, horizons + 1), len(issues))
    issue = np.repeat(issues, horizons)
    return pd.DataFrame({"station": station, "issue_ts": issue, "horizon": h, "target_ts": issue + h * step,
                         "model_version": "global@v1", "value": 1.0, "persistence": 0.5})


def test_newest_readings_and_pending_per_station(store: Store) -> None:  # noqa: F811
    step = 3600
    ahead, behind = np.arange(100) * step, np.arange(40) * step  # "A" is 60 steps ahead of "B"
    store.add_readings(np.array(["A"] * 100 + ["B"] * 40, dtype=object), np.r_[ahead, behind],
                       np.ones((140, 1)), ["T"])
    assert store.newest_by_station(["A", "B", "C"]) == {"A": 99 * step, "B": 39 * step}
    got = store.latest_readings(["A", "B"], {"A": 90 * step, "B": 30 * step})
    counts = got.groupby("station").size().to_dict()
    assert counts == {"A": 10, "B": 10}
    assert got[got["station"] == "B"]["time"].is_monotonic_increasing
    store.add_forecasts(pd.concat([_forecasts("A", [97 * step, 98 * step, 99 * step]),
                                   _forecasts("B", [37 * step, 38 * step, 39 * step])]))
    scored = _forecasts("B", [39 * step]).iloc[:1].assign(actual=1.0, abs_error=0.0, persistence_abs_error=0.5)
    store.add_errors(scored)
    pending = store.pending_since({"A": 99 * step, "B": 39 * step}, max_lead_s=3 * step)
    per = pending.groupby("station")["target_ts"].agg(["min", "size"]).to_dict("index")
    # Targets at or after each station's own time, whatever the other station's; the scored one is not pending.
    assert per["A"] == {"min": 99 * step, "size": 8} and per["B"] == {"min": 39 * step, "size": 7}
    assert store.pending_since({}, 0).empty

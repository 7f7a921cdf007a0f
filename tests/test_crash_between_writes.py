"""A crash between storing a batch's errors and its forecasts (errors go first, see ``Service._store_outcomes``).

The restarted service replays the batch's stored readings, so it issues the lost forecasts again and scores them
again. Their scores are also in the store already: the band calibration must learn each score once, or every band
after the restart differs from a run without the crash (found by the chaos test, where a kill landed there).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.run import build_service
from pipeline.store import Store
from tests.broker_fixture import kafka_broker  # noqa: F401
from tests.chaos_harness import own_band
from tests.pipeline_harness import (
    ServiceThread,
    expected_origins,
    fast_cfg,
    make_setup,
    month_of_records,
    publish,
    wait_until,
)
from tests.test_restart_recovery import BAND_TOLERANCE

DAYS, COPIES = 16, 2  # 6 stations x 384 h: a week of lookback, then 9 days of forecasts (own bands from day 10)
BATCH = 150  # small polls: the crash lands in one of many batches, after some bands became the stations' own
CRASH_AFTER = 0.3  # the crash hits the first batch after this share of the forecast rows is stored


class Crash(Exception):
    """Stands for the kill: nothing after it runs, and the batch's offsets are not committed."""


def _tables(url: str) -> dict[str, pd.DataFrame]:
    with Store.open(url) as s:
        key = "station, issue_ts, horizon"
        return {t: s._table_frame(t, "1 = 1", [], order=key) for t in ("forecasts", "errors")}


def _run_to_end(setup, records: pd.DataFrame, forecasts: int) -> None:
    with ServiceThread(setup) as service:
        wait_until(lambda: service.store.count("forecasts") >= forecasts, 300, f"{forecasts} forecast rows")


@pytest.mark.slow
def test_a_crash_between_errors_and_forecasts_leaves_every_band_as_without_it(kafka_broker, tmp_path):  # noqa: F811
    records = month_of_records(DAYS, copies=COPIES)
    control = fast_cfg(make_setup(kafka_broker.bootstrap, tmp_path / "control"), max_batch=BATCH)
    expected = len(expected_origins(records, control.card)) * len(control.card.data.horizons)
    publish(control, records)
    _run_to_end(control, records, expected)

    crashed = fast_cfg(make_setup(kafka_broker.bootstrap, tmp_path / "crashed"), max_batch=BATCH)
    publish(crashed, records)
    service = build_service(crashed.cfg, crashed.bootstrap)
    add_forecasts, stored = service.store.add_forecasts, []

    def add_forecasts_then_crash(frame: pd.DataFrame) -> None:
        if sum(stored) >= CRASH_AFTER * expected:
            raise Crash
        add_forecasts(frame)
        stored.append(len(frame))

    service.store.add_forecasts = add_forecasts_then_crash
    with pytest.raises(Crash):
        service.run()
    with Store.open(crashed.cfg.store_url) as s:
        scored = s._table_frame("errors", "1 = 1", [], order="issue_ts")
        last_issue = s._table_frame("forecasts", "1 = 1", [], order="issue_ts").groupby("station")["issue_ts"].max()
    # The case at hand: scores of forecasts issued after their station's last stored forecast (lost with the crash).
    lost = scored["issue_ts"].to_numpy() > scored["station"].map(last_issue).fillna(-1).to_numpy()
    assert lost.sum() > 0, "the crash left no scores of lost forecasts: nothing tested"

    _run_to_end(crashed, records, expected)
    want, have = _tables(control.cfg.store_url), _tables(crashed.cfg.store_url)
    for table in want:
        assert len(have[table]) == len(want[table]), f"{table}: {len(have[table])} rows, {len(want[table])} wanted"
    own = own_band(want["forecasts"], want["errors"], crashed.cfg)
    fc = want["forecasts"]
    after = fc["issue_ts"].to_numpy() > fc["station"].map(last_issue).fillna(-1).to_numpy()
    hit = fc["station"].isin(set(scored.loc[lost, "station"])).to_numpy()  # the stations whose scores were stored
    assert (own & after & hit).sum() > 100, "too few own-band forecasts of the crashed stations after it to check"
    gap = np.abs(have["forecasts"][["lo", "hi", "band_offset"]].to_numpy(float)
                 - want["forecasts"][["lo", "hi", "band_offset"]].to_numpy(float)).max(axis=1)
    bad = own & ~(gap <= BAND_TOLERANCE)
    assert not bad.any(), (f"{int(bad.sum()):,} of {int(own.sum()):,} own-band forecasts differ from the run without "
                           f"the crash, by up to {gap[bad].max():.3g}:\n"
                           + want["forecasts"].loc[bad, ["station", "issue_ts", "horizon"]].head(5).to_string()
                           + f"\nlast stored issue per station before the crash:\n{last_issue.to_string()}")

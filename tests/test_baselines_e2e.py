"""Both baselines and the calibrated band, read from the running service: a real broker, a real store and real
station records in; stored errors, /metrics and /api/status out."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import orjson
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from pipeline.http import HttpServer
from pipeline.scoring import season_of
from pipeline.store import Store
from tests.broker_fixture import kafka_broker  # noqa: F401
from tests.pipeline_harness import ServiceThread, make_setup, month_of_records, publish, wait_until


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def _table(url: str, table: str) -> pd.DataFrame:
    with Store.open(url) as s:
        return s._table_frame(table, "1 = 1", [], order="station, issue_ts, horizon")


def test_service_scores_both_baselines_and_calibrates_its_band(kafka_broker, tmp_path):  # noqa: F811
    setup = make_setup(kafka_broker.bootstrap, tmp_path)
    url = setup.cfg.store_url
    records = month_of_records(days=16)
    stats = publish(setup, records)
    with ServiceThread(setup) as service:
        http = HttpServer("127.0.0.1", 0, service.metrics.registry, lambda: service.alive, lambda: service.ready,
                          service.status).start()
        try:
            wait_until(lambda: service.totals.consumed >= stats.sent, 120, "all readings consumed")
            time.sleep(1.0)  # the last batch is stored before the totals move; let the loop go idle
            metrics = _samples(_get(f"{http.url}/metrics").decode())
            status = orjson.loads(_get(f"{http.url}/api/status"))
        finally:
            http.stop()
        first_offsets = service.calibrator.offsets(np.array(["EWR", "JFK", "LGA"], dtype=object))

    forecasts, errors = _table(url, "forecasts"), _table(url, "errors")
    with Store.open(url) as s:
        readings = s.history(0, 2**40)
    key = ["station", "issue_ts", "horizon"]
    rows = errors.merge(forecasts, on=key, suffixes=("", "_f"), validate="1:1")
    assert len(rows) == len(errors) > 3000

    # Diurnal persistence: the station's own reading 24 h before the target, scored on the model's rows.
    assert season_of(setup.card) == 24 and setup.card.data.lookback >= 24
    assert not forecasts["diurnal"].isna().any()  # a full window always reaches a day back at these horizons
    assert np.allclose(rows["diurnal_abs_error"], np.abs(rows["diurnal"] - rows["actual"]))
    assert np.allclose(rows["abs_error"], np.abs(rows["value"] - rows["actual"]))
    observed = readings.dropna(subset=["T"]).assign(ts=lambda f: f["time"].astype("datetime64[s]").astype(np.int64))
    day_before = forecasts.assign(ts=forecasts["target_ts"] - 86400).merge(observed[["station", "ts", "T"]],
                                                                           on=["station", "ts"])
    assert len(day_before) > 0.9 * len(forecasts)
    assert np.allclose(day_before["diurnal"], day_before["T"])

    # The band: coverage and conformity scores follow the stored (published, calibrated) lo/hi.
    inside = (rows["actual"] >= rows["lo"]) & (rows["actual"] <= rows["hi"])
    assert np.array_equal(rows["covered"].to_numpy(), inside.to_numpy(dtype=np.float64))
    raw = np.maximum(rows["lo"] - rows["actual"], rows["actual"] - rows["hi"]) + rows["band_offset"]
    assert np.allclose(rows["band_score"], raw)
    calibrated = forecasts["band_offset"].to_numpy() != 0
    assert calibrated.any() and not calibrated[:100].any()  # the first forecasts go out with the model's band
    assert (forecasts["lo"] <= forecasts["hi"]).all()

    # /metrics: the diurnal histogram counts the same rows and errors as the store; coverage per horizon.
    for h in (1, 24):
        mine = errors[errors["horizon"] == h]
        labels = (("forecaster", "diurnal"), ("horizon", str(h)))
        assert metrics[("stationcast_abs_error_celsius_count", labels)] == len(mine)
        assert np.isclose(metrics[("stationcast_abs_error_celsius_sum", labels)], mine["diurnal_abs_error"].sum())
        coverage = metrics[("stationcast_band_coverage", (("horizon", str(h)),))]
        assert 0 < coverage < 1
    fleet = {f: metrics[("stationcast_rolling_mae_celsius", (("forecaster", f), ("station", "all")))]
             for f in ("model", "persistence", "diurnal")}
    best = metrics[("stationcast_skill_vs_best_baseline", (("station", "all"),))]
    assert np.isclose(best, 1 - fleet["model"] / min(fleet["persistence"], fleet["diurnal"]))
    assert np.isclose(metrics[("stationcast_skill_vs_persistence", (("station", "all"),))],
                      1 - fleet["model"] / fleet["persistence"])
    assert ("stationcast_horizon_skill_vs_best_baseline", (("horizon", "24"),)) in metrics
    assert ("stationcast_rolling_mae_celsius", (("forecaster", "diurnal"), ("station", "EWR"))) in metrics

    # /api/status: both baselines, skill against the better, per horizon with coverage.
    svc = status["service"]
    assert np.isclose(svc["rolling_diurnal_mae"], fleet["diurnal"]) and np.isclose(svc["skill"], best)
    assert svc["best_baseline"] == ("diurnal" if fleet["diurnal"] < fleet["persistence"] else "persistence")
    assert [h["horizon"] for h in svc["horizons"]] == list(setup.card.data.horizons)
    assert all(0 < h["coverage"] < 1 and h["diurnal_mae"] > 0 for h in svc["horizons"])
    assert svc["band_calibrated_stations"] == 3
    for st in status["stations"]:
        assert st["diurnal_mae"] > 0
        assert np.isclose(st["skill"], 1 - st["mae"] / min(st["persistence_mae"], st["diurnal_mae"]))

    # A restart rebuilds the stations' band calibration from the stored scores.
    with ServiceThread(setup) as again:
        wait_until(lambda: again.calibrator.stations_calibrated == 3, 60, "calibration rebuilt on assignment")
        assert np.allclose(again.calibrator.offsets(np.array(["EWR", "JFK", "LGA"], dtype=object)), first_offsets)

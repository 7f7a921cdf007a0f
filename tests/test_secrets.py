"""The store password never leaves the process that was given it: not in a job's command line, not in the logs,
not in /api/status or /metrics (issue 10, item 6). A real ``stationcast serve`` on PostgreSQL with a password in
its URL runs its scheduled retraining subprocess while the test reads every child's argv from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from forecaster.registry import Registry
from pipeline.broker import free_port
from pipeline.config import ServiceConfig
from pipeline.metrics import Metrics
from pipeline.pretrained import ensure_champion
from pipeline.redact import redact_url
from pipeline.scheduler import LifecycleScheduler
from pipeline.scoring import RollingSkill
from tests.pipeline_harness import FakeView, wait_until
from tests.procs import descendants, read_proc

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret-pw"  # trust auth: PostgreSQL accepts any password, so a real one can be passed along
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture
def pg_database():
    """A database of its own (the service has no namespace setting), dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"stationcast_secrets_{uuid.uuid4().hex[:8]}"
    try:
        admin = psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL at {ADMIN_URL} is needed under CI: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    with admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"postgresql://postgres:{PASSWORD}@127.0.0.1:5432/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read().decode()


def test_store_password_stays_out_of_argv_logs_status_and_metrics(pg_database, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATIONCAST_")}
    env |= {"STATIONCAST_STORE_URL": pg_database, "STATIONCAST_RETRAIN_INTERVAL_S": "3",
            "STATIONCAST_REGISTRY": str(tmp_path / "registry"), "STATIONCAST_DEVICE": "cpu",
            "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", "--http-host", "0.0.0.0",
                                 "--http-port", str(port)], cwd=tmp_path, env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    argv_seen: dict[int, set[bytes]] = {}
    job_env: dict[int, bytes] = {}

    def retraining_done() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"serve exited {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        for child in descendants(proc.pid):
            argv = read_proc(child, "cmdline")  # empty once it has exited (a zombie)
            argv_seen.setdefault(child, set()).add(argv)
            if b"pipeline.retrain" in argv:
                job_env[child] = job_env.get(child) or read_proc(child, "environ")
        return "retraining failed in" in log_path.read_text()

    try:
        wait_until(retraining_done, 240, "a scheduled retraining to run and report", interval=0.05)
        status = _get(f"http://127.0.0.1:{port}/api/status")
        metrics = _get(f"http://127.0.0.1:{port}/metrics")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    text = log_path.read_text()
    seen = [(pid, argv) for pid, argvs in argv_seen.items() for argv in argvs]
    assert any(b"pipeline.retrain" in argv for _, argv in seen), f"no retraining subprocess was seen: {seen}"
    for pid, argv in seen:
        assert PASSWORD.encode() not in argv, f"password on the command line of {pid}: {argv!r}"
    # The job got the store another way: its own environment, readable only by the same user.
    assert any(f"STATIONCAST_STORE_URL={pg_database}".encode() in e for e in job_env.values()), job_env
    # ... and really used it: it read the (empty) PostgreSQL store, not some default database.
    assert "the store holds no readings yet" in text, text[-3000:]
    assert PASSWORD not in text, "password in the service's log output"
    assert redact_url(pg_database) in text, "the store should still be named (with the password masked)"
    assert PASSWORD not in status and PASSWORD not in metrics
    # Binding every address is allowed, and said: a warning line, not an error.
    assert "WARNING" in text and "http_host 0.0.0.0" in text, text[:3000]
    assert proc.returncode == 0, text[-3000:]


def test_finetune_job_reads_the_store_from_its_environment(pg_database, tmp_path):
    """The scheduler's fine-tuning subprocess (real, started the scheduler's way) gets the store URL in its
    environment, not its argv, and reads that store with the service's settings loader."""
    cfg = ServiceConfig(store_url=pg_database, registry=str(tmp_path / "registry"), finetune_interval_s=3600.0)
    ensure_champion(Registry(cfg.registry), "global")
    sched = LifecycleScheduler(cfg, Metrics(), FakeView(RollingSkill(), val_mae=1.0))
    sched.state.record("finetune", datetime.now(UTC))  # not due: only the request below runs it
    sched.start()
    seen: dict[int, tuple[bytes, bytes]] = {}

    def done() -> bool:
        for child in descendants(os.getpid()):
            argv = read_proc(child, "cmdline")
            if b"pipeline.finetune" in argv and child not in seen:
                seen[child] = (argv, read_proc(child, "environ"))
        return bool(sched.finetune_outcomes)

    try:
        assert sched.finetune_now(["nowhere"], "test")
        wait_until(done, 180, "the fine-tuning subprocess to report", interval=0.05)
    finally:
        sched.stop()
    [out] = sched.finetune_outcomes
    assert out.outcome == "failed" and "no readings of station 'nowhere'" in out.reason, out
    assert seen, "no fine-tuning subprocess was seen"
    for argv, environ in seen.values():
        assert PASSWORD.encode() not in argv, argv
        assert f"STATIONCAST_STORE_URL={pg_database}".encode() in environ.split(b"\0")

"""Bad settings, as a user would give them to the real CLI: one line on stderr naming the setting, exit code 2,
no traceback, and nothing started or created (issue 10, item 9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from forecaster.registry import Registry
from pipeline.pretrained import ensure_champion
from tests.procs import descendants, read_proc

ROOT = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing_cuda() -> str:
    """A CUDA device this machine does not have: any on a CPU-only machine, else one past the last GPU."""
    return f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"


@dataclass
class Case:
    args: list[str]
    mentions: str  # the setting (or thing) the one line must name
    env: dict[str, str | None] = field(default_factory=dict)  # None: unset
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text ("/" suffix: a folder)
    setup: Callable[[Path], object] | None = None


SERVE = ["serve"]
CASES: dict[str, Case] = {
    "yaml_syntax_error": Case([*SERVE, "--config", "bad.yaml"], "bad.yaml", files={"bad.yaml": "http_port: [1\n"}),
    "config_is_a_directory": Case([*SERVE, "--config", "adir"], "adir", files={"adir/": ""}),
    "yaml_http_port_text": Case([*SERVE, "--config", "s.yaml"], "http_port", files={"s.yaml": 'http_port: "abc"\n'},
                                env={"STATIONCAST_HTTP_PORT": None}),
    "yaml_partitions_0": Case([*SERVE, "--config", "s.yaml"], "partitions", files={"s.yaml": "partitions: 0\n"}),
    "env_http_port_out_of_range": Case(SERVE, "http_port", env={"STATIONCAST_HTTP_PORT": "99999"}),
    "env_http_host_bad_ip": Case(SERVE, "http_host", env={"STATIONCAST_HTTP_HOST": "256.1.1.1"}),
    "env_device_tpu": Case(SERVE, "device", env={"STATIONCAST_DEVICE": "tpu"}),
    "env_device_cuda_missing": Case(SERVE, "device", env={"STATIONCAST_DEVICE": _missing_cuda()}),
    "env_torch_threads_negative": Case(SERVE, "torch_threads", env={"STATIONCAST_TORCH_THREADS": "-3"}),
    "env_security_protocol_bogus": Case(SERVE, "security_protocol", env={"STATIONCAST_SECURITY_PROTOCOL": "BOGUS"}),
    "bootstrap_unreachable": Case([*SERVE, "--bootstrap-servers", f"127.0.0.1:{_closed_port()}"],
                                  "bootstrap_servers"),
    "postgres_database_missing": Case(SERVE, "store_url", env={
        "STATIONCAST_STORE_URL": "postgresql://postgres@127.0.0.1:5432/stationcast_no_such_database"}),
    "postgres_port_closed": Case(SERVE, "store_url", env={
        "STATIONCAST_STORE_URL": f"postgresql://postgres@127.0.0.1:{_closed_port()}/test"}),
    "sqlite_path_is_a_directory": Case([*SERVE, "--store-url", "sqlite:///adir"], "store_url", files={"adir/": ""}),
    "sqlite_file_not_a_database": Case([*SERVE, "--store-url", "sqlite:///notes.db"], "store_url",
                                       files={"notes.db": "these are my notes, not a database\n"}),
    "http_port_in_use": Case(SERVE, "http_port"),  # the test holds the port (see below)
    "replay_missing_ca_file": Case(
        ["replay", "--data", "readings.csv", "--bootstrap-servers", f"127.0.0.1:{_closed_port()}"], "ssl_cafile",
        env={"STATIONCAST_SECURITY_PROTOCOL": "SSL", "STATIONCAST_SSL_CAFILE": "missing-ca.pem"}),
    "replay_reads_config": Case(
        ["replay", "--data", "readings.csv", "--config", "s.yaml"], "security_protocol",
        files={"s.yaml": "bootstrap_servers: 127.0.0.1:9\nsecurity_protocol: TLS\n"}),
    "models_promote_unknown_version": Case(["models", "promote", "99", "--registry", "reg"], "no version 99",
                                           setup=lambda tmp: ensure_champion(Registry(tmp / "reg"), "global")),
    "models_retire_unknown_station": Case(["models", "retire", "--name", "station-nowhere", "--registry", "reg"],
                                          "station-nowhere",
                                          setup=lambda tmp: ensure_champion(Registry(tmp / "reg"), "global")),
    "retrain_missing_sqlite_store": Case(["retrain", "--store-url", "sqlite:///missing/store.db", "--registry",
                                          "reg"], "store_url"),
}


def _listing(tmp: Path) -> set[str]:
    return {str(p.relative_to(tmp)) for p in tmp.rglob("*")}


def _run_cli(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 90) -> tuple[int | None, str, set]:
    """(exit code, stderr, command lines of the processes it started) of ``stationcast ARGS``, watched through
    /proc while it runs; a CLI that accepted the settings and kept serving is stopped with SIGTERM (so its
    embedded broker goes with it) and reported as exit None."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        started: set[bytes] = set()
        deadline = time.monotonic() + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            started |= {read_proc(p, "cmdline") for p in descendants(proc.pid)} - {b""}
            time.sleep(0.05)
        rc = proc.poll()
        if rc is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        err.seek(0)
        return rc, err.read().decode(errors="replace"), started


@pytest.mark.parametrize("name", list(CASES))
def test_bad_setting_is_one_line_and_exit_2(name, tmp_path):
    case = CASES[name]
    for rel, text in case.files.items():
        path = tmp_path / rel
        if rel.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.write_text(text)
    if case.setup:
        case.setup(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATIONCAST_")}
    env |= {"STATIONCAST_HTTP_PORT": "0", "STATIONCAST_REGISTRY": str(tmp_path / "reg"),
            "STATIONCAST_STORE_URL": f"sqlite:///{tmp_path}/store/db.sqlite", **case.env}
    env = {k: v for k, v in env.items() if v is not None}
    holder = socket.socket()
    try:
        if name == "http_port_in_use":
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            env["STATIONCAST_HTTP_PORT"] = str(holder.getsockname()[1])
        before = _listing(tmp_path)
        rc, stderr, started = _run_cli(case.args, tmp_path, env)
    finally:
        holder.close()
    err = stderr.strip()
    assert rc == 2, f"exit {rc}; stderr:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{stderr[-3000:]}"
    assert case.mentions in err and "error:" in err, err
    # Nothing started (no embedded broker, no job) and nothing created: no store, registry, var/ or model folder.
    assert not started, f"processes started: {started}"
    assert _listing(tmp_path) == before, f"created {_listing(tmp_path) - before}"


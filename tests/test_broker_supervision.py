"""The embedded broker under a real ``stationcast serve``: its death is seen (readiness, metrics), it is
restarted and consumption resumes; and it dies with the service instead of lingering as an orphan."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.broker import BrokerConfig, make_producer
from pipeline.replay import replay
from pipeline.store import Store
from tests.pipeline_harness import ROOT, month_of_records, wait_until


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metric(base: str, name: str) -> float | None:
    found = re.search(rf"^{name} (\S+)$", _get(f"{base}/metrics")[1], re.MULTILINE)
    return None if found is None else float(found.group(1))


def _children(pid: int) -> dict[int, str]:
    """Live child processes of ``pid`` -> their command name, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if int(rest[1]) == pid and rest[0] != "Z":
            out[int(entry.name)] = comm
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"


def _tansu(pid: int) -> int:
    brokers = [p for p, comm in _children(pid).items() if comm == "tansu"]
    assert len(brokers) == 1, _children(pid)
    return brokers[0]


def test_embedded_broker_death_is_seen_restarted_and_dies_with_the_service(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/store.db"
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", "--store-url", store_url, "--registry",
           str(tmp_path / "registry"), "--http-port", "0", "--device", "cpu"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=open(log, "ab"), stderr=subprocess.STDOUT,  # noqa: SIM115
                            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        found: list[tuple[str, str]] = []

        def up() -> bool:
            assert proc.poll() is None, log.read_text()[-4000:]
            found[:] = re.findall(r"service up: broker ([\d.]+:\d+),.* metrics (http://[\d.]+:\d+)/metrics",
                                  log.read_text())
            return bool(found)

        wait_until(up, 180, "serve to start")
        bootstrap, base = found[0]
        wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 120, "partitions assigned")
        first = _tansu(proc.pid)

        os.kill(first, signal.SIGKILL)
        seen = {"readyz": set(), "broker_up": set(), "ready": set()}

        def restarted() -> bool:
            seen["readyz"].add(_get(f"{base}/readyz")[0])
            seen["broker_up"].add(_metric(base, "stationcast_broker_up"))
            seen["ready"].add(_metric(base, "stationcast_ready"))
            return (_metric(base, "stationcast_broker_restarts_total") == 1.0 and 503 in seen["readyz"]
                    and _get(f"{base}/readyz")[0] == 200)

        try:
            wait_until(restarted, 90, "the broker outage to show and the broker to be restarted", interval=0.05)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; seen {seen}") from None
        assert 0.0 in seen["broker_up"] and 0.0 in seen["ready"], seen
        second = _tansu(proc.pid)
        assert second != first and _alive(second)
        assert _metric(base, "stationcast_broker_up") == 1.0

        # The restarted broker is empty (memory only); a gateway sends again, and the service consumes it.
        records = month_of_records(days=2)
        config = BrokerConfig(bootstrap_servers=bootstrap)
        producer = make_producer(config, bootstrap)
        try:
            stats = replay(records, producer, config.readings_topic, progress=False)
        finally:
            producer.close()

        def stored() -> int:
            assert proc.poll() is None, log.read_text()[-4000:]
            with Store.open(store_url) as store:
                return store.count("readings")

        wait_until(lambda: stored() == stats.sent, 120, "readings published after the restart to be stored")

        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        wait_until(lambda: not _alive(second), 10, "the broker to die with its service")
    finally:
        left = list(_children(proc.pid)) if proc.poll() is None else []
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for pid in left:  # a broker that would outlive its service (the defect this test is about)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)



def test_readiness_drops_while_an_external_broker_is_unreachable(tmp_path: Path) -> None:
    """A cluster the service does not own (here a Tansu the test starts) goes away: after a session timeout
    without any broker connection the service is not ready; when the broker is back it is ready again."""
    from pipeline.broker import EmbeddedBroker, ensure_topics
    from tests.pipeline_harness import ServiceThread, make_setup, metric

    with EmbeddedBroker() as broker:
        setup = make_setup(broker.bootstrap, tmp_path)
        with ServiceThread(setup) as service:
            wait_until(lambda: service.ready, 120, "partitions assigned")
            broker.stop()
            wait_until(lambda: not service.ready, 60, "readiness to drop without a broker")
            assert metric(service, "stationcast_broker_up") == 0.0
            broker.restart()
            ensure_topics(setup.cfg.broker, broker.bootstrap, setup.cfg.broker.topics())
            wait_until(lambda: service.ready, 120, "readiness once the broker is back")
            assert metric(service, "stationcast_broker_up") == 1.0

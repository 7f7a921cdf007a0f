"""Every setting of :class:`ServiceConfig` and :class:`BrokerConfig` checked by type and range in one place.

Called by :func:`pipeline.config.load_config` after the layers are merged, so a bad value is refused with one line
that names the setting, where it came from (YAML file, environment variable or flag) and what is allowed, before
anything starts. Fields without a rule of their own must have their annotated type and, when numeric, be finite
and not negative (a new setting is checked without being listed here).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from pipeline.cadence import parse_declared
from pipeline.redact import redact_url
from pipeline.store_url import ALLOWED, parse_store_url

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
DEVICES = "auto | cpu | cuda | cuda:N"
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,100}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?")


class SettingError(ValueError):
    """A setting with a value that is not allowed; the message is one line naming it."""


Rule = Callable[[Any], str | None]  # None when allowed, else what is allowed


def _between(lo: float, hi: float | None = None, what: str = "") -> Rule:
    def rule(v: Any) -> str | None:
        if v < lo or (hi is not None and v > hi):
            return what or (f"must be between {lo:g} and {hi:g}" if hi is not None else f"must be at least {lo:g}")
        return None
    return rule


def _positive(v: Any) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _choice(options: tuple[str, ...]) -> Rule:
    return lambda v: None if v in options else f"must be one of {' | '.join(options)}"


def _device(v: str) -> str | None:
    return None if re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) else f"must be {DEVICES}"


def _host(v: str) -> str | None:
    try:
        ipaddress.ip_address(v)
        return None
    except ValueError:
        pass
    if re.fullmatch(r"[\d.]+", v) or not _HOSTNAME.fullmatch(v):
        return "must be an IP address (e.g. 127.0.0.1) or a host name"
    return None


def _bootstrap(v: str) -> str | None:
    allowed = "must be host:port[,host:port...] (e.g. kafka-1:9092,kafka-2:9092)"
    for server in v.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or _host(host.strip("[]")):
            return allowed
    return None


def _store_url(v: str) -> str | None:
    try:
        parse_store_url(v)
    except ValueError:
        return ALLOWED
    return None


def _cron(v: str) -> str | None:
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(v)
    except ValueError as exc:
        return f"must be a crontab line of 5 fields, e.g. '0 3 * * *' ({exc})"
    return None


def _margin(v: float) -> str | None:
    return None if v < 1 else "must be below 1 (a relative MAE gain)"


def _declared_cadences(value: str) -> str | None:
    try:
        parse_declared(value)
    except ValueError as exc:
        return f"must be station=cadence entries, comma-separated: {exc}"
    return None


RULES: dict[str, Rule] = {
    "bootstrap_servers": _bootstrap,
    "security_protocol": _choice(SECURITY_PROTOCOLS),
    "sasl_mechanism": _choice(SASL_MECHANISMS),
    "readings_topic": lambda v: None if _TOPIC.fullmatch(v) else "must be 1-249 of A-Z a-z 0-9 . _ -",
    "partitions": _between(1, 10_000),
    "store_url": _store_url,
    "registry": lambda v: None if v.strip() else "must be a folder path",
    "model_name": lambda v: None if _MODEL_NAME.fullmatch(v) else "must be letters, digits, '_', '.', '-'",
    "group_id": lambda v: None if v.strip() else "must not be empty",
    "max_batch": _between(1),
    "poll_timeout_ms": _between(1, 60_000),
    "session_timeout_ms": _between(1000, 3_600_000),
    "heartbeat_interval_ms": _between(100, 3_600_000),
    "http_host": _host,
    "http_port": _between(0, 65535, "must be a TCP port 1-65535, or 0 for any free port"),
    "device": _device,
    "training_device": _device,
    "torch_threads": _between(0, 1024, "must be 0 (torch's default) or a number of threads up to 1024"),
    "model_check_s": _positive,
    "retrain_cron": _cron,
    "retrain_history_days": _positive,
    "retrain_epochs": _between(1),
    "retrain_timeout_s": _positive,
    "training_nice": _between(0, 19, "must be 0-19 (a niceness increment)"),
    "promote_margin": _margin,
    "finetune_margin": _margin,
    "finetune_history_days": _positive,
    "finetune_epochs": _between(1),
    "finetune_max_stations": _between(1),
    "finetune_timeout_s": _positive,
    "band_window": _between(0, 10_000, "must be 0 (no calibration) or a number of scores up to 10000"),
    "band_min_scores": _between(1, 10_000),
    "band_feedback": _between(0, 5, "must be 0 (the plain conformal quantile) to 5"),
    "station_cadences": _declared_cadences,
}
RULES["forecasts_topic"] = RULES["deadletter_topic"] = RULES["readings_topic"]
for _name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
    RULES[_name] = lambda v: None if os.path.isfile(v) else "must be an existing file"


def validate(cfg: Any, origins: dict[str, str] | None = None) -> Any:
    """``cfg`` (a ServiceConfig) with ints in float settings made floats; :class:`SettingError` on a bad value.

    ``origins`` maps a setting to where its value came from (``STATIONCAST_HTTP_PORT``, ``--http-port``,
    ``settings.yaml``), named in the message."""
    origins = origins or {}
    broker = _check_dataclass(cfg.broker, origins)
    cfg = replace(_check_dataclass(cfg, origins, skip=("broker",)), broker=broker)
    _check_together(cfg, origins)
    return cfg


def _check_dataclass(obj: Any, origins: dict[str, str], skip: tuple[str, ...] = ()) -> Any:
    hints = typing.get_type_hints(type(obj))
    fixed = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        value = _check_type(f.name, value, hints[f.name], origins)
        if value is None:
            continue
        fixed[f.name] = value
        rule = RULES.get(f.name)
        problem = rule(value) if rule else None
        if problem is None and rule is None and isinstance(value, int | float) and not isinstance(value, bool):
            problem = None if value >= 0 else "must not be negative"
        if problem:
            _fail(f.name, value, problem, origins)
    return replace(obj, **fixed)


def _check_type(name: str, value: Any, hint: Any, origins: dict[str, str]) -> Any:
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union \
        else (hint,)
    if value is None:
        if type(None) in args:
            return None
        _fail(name, value, "must be set", origins)
    kinds = [a for a in args if a is not type(None)]
    kind = kinds[0] if len(kinds) == 1 else None
    if kind is bool:
        if not isinstance(value, bool):
            _fail(name, value, "must be true or false", origins)
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(name, value, "must be a whole number", origins)
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(name, value, "must be a number", origins)
        value = float(value)
        if not math.isfinite(value):
            _fail(name, value, "must be a finite number", origins)
    elif kind is str and not isinstance(value, str):
        _fail(name, value, "must be a text value", origins)
    return value


def _check_together(cfg: Any, origins: dict[str, str]) -> None:
    b = cfg.broker
    if cfg.heartbeat_interval_ms >= cfg.session_timeout_ms:
        _fail("heartbeat_interval_ms", cfg.heartbeat_interval_ms,
              f"must be below session_timeout_ms ({cfg.session_timeout_ms})", origins)
    if cfg.retrain_holdout_days <= 0 or cfg.retrain_holdout_days >= cfg.retrain_history_days:
        _fail("retrain_holdout_days", cfg.retrain_holdout_days,
              f"must be above 0 and below retrain_history_days ({cfg.retrain_history_days:g})", origins)
    if cfg.finetune_holdout_days <= 0 or cfg.finetune_holdout_days >= cfg.finetune_history_days:
        _fail("finetune_holdout_days", cfg.finetune_holdout_days,
              f"must be above 0 and below finetune_history_days ({cfg.finetune_history_days:g})", origins)
    sasl = b.security_protocol.startswith("SASL_")
    if sasl and (not b.sasl_mechanism or b.sasl_username is None or b.sasl_password is None):
        _fail("security_protocol", b.security_protocol,
              "needs sasl_mechanism, sasl_username and sasl_password", origins)
    for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
        if getattr(b, name) is not None and not sasl:
            _fail(name, getattr(b, name),
                  f"is set but security_protocol is {b.security_protocol} (use SASL_PLAINTEXT or SASL_SSL)", origins)
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(b, name) is not None and b.security_protocol not in ("SSL", "SASL_SSL"):
            _fail(name, getattr(b, name), f"is set but security_protocol is {b.security_protocol} "
                                          "(use SSL or SASL_SSL, or the file is ignored)", origins)
    if (b.ssl_certfile is None) != (b.ssl_keyfile is None):
        _fail("ssl_keyfile" if b.ssl_keyfile is None else "ssl_certfile", None,
              "must be set together with ssl_certfile/ssl_keyfile (mutual TLS)", origins)


def _fail(name: str, value: Any, problem: str, origins: dict[str, str]) -> typing.NoReturn:
    shown = "***" if "password" in name and value is not None else redact_url(value) if isinstance(value, str) \
        else value
    where = origins.get(name)
    prefix = f"{where}: " if where else ""
    raise SettingError(f"{prefix}setting {name}={shown!r} {problem}".replace("\n", " "))

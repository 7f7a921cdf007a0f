"""How a training job (retraining, station fine-tuning) gets its settings: exactly as the service does.

One settings type, :class:`pipeline.config.ServiceConfig`, layered the same way (defaults, ``--config`` YAML,
``STATIONCAST_*`` variables, flags; :func:`pipeline.config.load_config`). The scheduler starts a job with the
service's own settings in the job's environment (:func:`job_env`), never on its command line (``ps`` shows argv to
every user, a process' environment only to its owner), so there is no second copy of any setting to drift. A job's
flags are overrides whose defaults are those of the settings.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipeline.config import ServiceConfig, load_config
from pipeline.store_url import parse_store_url
from pipeline.validation import SettingError


def add_store_arguments(p: argparse.ArgumentParser) -> None:
    """Where a job reads and writes, and which settings file it shares with the service."""
    d = ServiceConfig()
    p.add_argument("--config", help="YAML file of settings, as the service's (docs/configuration.md); the job reads "
                                    "store_url, registry, model_name, its own retrain_*/finetune_* settings and "
                                    "training_device from it")
    p.add_argument("--store-url", help="default: STATIONCAST_STORE_URL, else store_url in --config, else "
                                       f"{d.store_url}; a password belongs in the variable or the file, not "
                                       "here (ps shows it)")
    p.add_argument("--registry", help=f"default: STATIONCAST_REGISTRY, else registry in --config, else {d.registry}")
    p.add_argument("--device", help=f"training device: auto | cpu | cuda (default: the training_device setting, "
                                    f"{d.training_device})")


def setting_help(text: str, setting: str) -> str:
    """A flag's help naming the setting it overrides and that setting's default."""
    return f"{text} (default: the {setting} setting, {getattr(ServiceConfig(), setting)})"


def job_config(args: argparse.Namespace, flag_names: dict[str, str], **overrides: Any) -> ServiceConfig:
    """The job's settings: ``overrides`` (its flags, None when not given) over the layers the service reads.
    ``flag_names`` maps a setting to the flag that set it, for error messages. The store must already exist: a job
    reads history, it never creates a database."""
    from pipeline.preflight import check_store, warn_password_on_command_line

    flags = {"store_url": args.store_url, "registry": args.registry, "training_device": args.device, **overrides}
    names = {"store_url": "--store-url", "registry": "--registry", "training_device": "--device", **flag_names}
    cfg = load_config(args.config, flag_names=names, **flags)
    check_store(cfg.store_url, must_exist=True)
    warn_password_on_command_line(args.store_url)
    return cfg


def job_env(cfg: ServiceConfig) -> dict[str, str]:
    """The service's settings as the ``STATIONCAST_*`` variables a job reads (:func:`job_config`); a relative SQLite
    path is made absolute, since jobs run from the project root. Broker settings stay out: jobs never reach Kafka."""
    out = {}
    for f in fields(ServiceConfig):
        value = getattr(cfg, f.name)
        if f.name == "broker" or value is None:
            continue
        if f.name == "store_url":
            value = parse_store_url(value).absolute()
        elif f.name == "registry":
            value = str(Path(value).absolute())
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out[f"STATIONCAST_{f.name.upper()}"] = str(value)
    return out


def job_flags(cfg: ServiceConfig) -> list[str]:
    """How a job runs beside the service (not what it does): one thread, lower priority, no progress bars."""
    return ["--torch-threads", "1", "--no-progress", "--nice", str(cfg.training_nice)]


def job_main(prog: str, args: argparse.Namespace, run: Callable[[argparse.Namespace], int]) -> int:
    """``python -m`` entry of a job: logging on stderr, and a bad setting is one line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    try:
        return run(args)
    except SettingError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2

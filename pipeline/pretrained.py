"""The model a fresh install serves: shipped in the package so forecasts start at once, offline.

It was trained by ``make pretrained`` (see the Makefile) on the Jena hourly record and four NOAA
stations, none of which is the default replay data (the New York airports of 2013), so the errors the
main job shows are honest out-of-sample errors.
"""

from __future__ import annotations

import logging
from pathlib import Path

from forecaster.artifact import ArtifactError, load_artifact
from forecaster.registry import GLOBAL, Registry, RegistryError, VersionInfo
from pipeline.cadence import HOURLY, cadence_of_name, champion_name, shipped_dir

log = logging.getLogger("stationcast.pretrained")
SHIPPED = Path(__file__).resolve().parent / "pretrained_models"


def shipped_artifact(name: str) -> Path | None:
    """The shipped model for registry name ``name`` (``global-10min`` ships as ``global_10min``)."""
    for path in (SHIPPED / name, SHIPPED / shipped_dir(name)):
        if (path / "card.json").exists():
            return path
    return None


def cadence_champions(registry: Registry, base: str = GLOBAL) -> dict[int, str]:
    """The registry names of ``base``'s champions per cadence (see :mod:`pipeline.cadence`): hourly ``base`` and
    every ``base-<label>`` the registry holds or the package ships. A registry name wins over a shipped one, and
    ``base_<label>`` (the shipped folder's spelling, e.g. ``train --name global_10min``) is accepted too."""
    out: dict[int, str] = {}
    shipped = sorted(p.name for p in SHIPPED.iterdir() if (p / "card.json").exists())
    for name in shipped:
        cadence = cadence_of_name(base, name)
        if cadence is not None and cadence != HOURLY:
            out[cadence] = champion_name(base, cadence)
    held = [n for n in registry.names() if registry.champion(n) is not None]
    for name in sorted(held, key=lambda n: "-" in n):  # the canonical hyphen spelling last, so it wins
        cadence = cadence_of_name(base, name)
        if cadence is not None and cadence != HOURLY:
            out[cadence] = name
    return {HOURLY: base, **dict(sorted(out.items()))}


def ensure_champion(registry: Registry, name: str, level: int = logging.INFO) -> VersionInfo:
    """The registry's champion for ``name``; a fresh registry is seeded with the shipped model first (logged at
    ``level``: the service says so, a command keeps its stderr for its own result or its one-line error)."""
    champion = registry.champion(name)
    if champion is not None:
        return champion
    shipped = shipped_artifact(name)
    if shipped is None:
        raise RegistryError(
            f"no champion for {name!r} in {registry.root} and no shipped model: train one with "
            f"`stationcast train --data FILE --registry {registry.root} --name {name} --promote`"
        )
    try:
        model, card = load_artifact(shipped)
    except ArtifactError as exc:
        raise RegistryError(f"the shipped model is unusable: {exc}") from exc
    info = registry.register(name, model, card, note=f"shipped pretrained model ({shipped.name})")
    registry.promote(name, info.version, note="seeded from the shipped model")
    log.log(level, "seeded %s with the shipped model as %s", registry.root, info.tag)
    return registry.champion(name)


def seed_registry(registry: Registry, name: str = GLOBAL) -> VersionInfo | None:
    """What the command line does on use of a registry: the shipped model becomes the champion of a name that
    has none, as the service does at start; a brand-new registry gets every shipped cadence's champion too
    (``global-10min``), so a 10-minute file finds its model. Without a shipped model, nothing happens."""
    fresh = name == GLOBAL and not registry.names()
    names = [name, *(n for n in cadence_champions(registry, name).values() if n != name)] if fresh else [name]
    for n in names:
        if registry.champion(n) is None and shipped_artifact(n) is not None:
            ensure_champion(registry, n, logging.DEBUG)
    return registry.champion(name)

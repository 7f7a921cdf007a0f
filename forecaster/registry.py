"""An on-disk model registry: numbered versions per model name, a ``champion`` alias, promote, rollback.

Layout: ``ROOT/NAME/v0003/{model.safetensors,card.json}`` and ``ROOT/NAME/registry.json``. Names are
``global`` for the fleet model and ``station-<id>`` for fine-tuned station models. Every change takes an
exclusive file lock and rewrites the index atomically, so a trainer process and the service can share it.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import torch
from torch import nn

from forecaster.artifact import ArtifactError, ModelCard, atomic_write, load_artifact, read_card, save_artifact

GLOBAL = "global"
DEFAULT_REGISTRY = "var/registry"  # the CLI's and the service's default: `make run` seeds it with the shipped model
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,100}$")


class RegistryError(ValueError):
    pass


def default_registry() -> str:
    """``$STATIONCAST_REGISTRY`` when set (the service reads the same variable), else ``var/registry``."""
    return os.environ.get("STATIONCAST_REGISTRY") or DEFAULT_REGISTRY


STATION_PREFIX = "station-"


def station_model_name(station: str) -> str:
    return f"{STATION_PREFIX}{re.sub(r'[^A-Za-z0-9_.-]', '_', station)}"


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: int
    status: str  # candidate | champion | retired | rejected
    created_at: str
    metrics: dict
    note: str

    @property
    def tag(self) -> str:
        """How forecasts name the model that made them."""
        return f"{self.name}@v{self.version}"


def parse_tag(tag: str) -> tuple[str, int]:
    name, _, v = tag.rpartition("@v")
    if not name or not v.isdigit():
        raise RegistryError(f"bad model tag {tag!r}: expected NAME@vN")
    return name, int(v)


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, name: str) -> Path:
        if not _NAME.match(name):
            raise RegistryError(f"bad model name {name!r}")
        return self.root / name

    def _index_path(self, name: str) -> Path:
        return self._dir(name) / "registry.json"

    def _read(self, name: str) -> dict:
        path = self._index_path(name)
        if not path.exists():
            return {"versions": {}, "champion": None, "history": [], "events": []}
        return orjson.loads(path.read_bytes())

    @contextmanager
    def _locked(self, name: str, create: bool = False) -> Iterator[dict]:
        """The index under an exclusive lock, written back on exit; only ``create`` (register) may make a new
        model's folder, so a command naming an unknown model leaves nothing behind."""
        d = self._dir(name)
        if not create and not self._index_path(name).exists():
            raise RegistryError(f"no model named {name!r} in registry {self.root} (`stationcast models list`)")
        d.mkdir(parents=True, exist_ok=True)
        with open(d / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._read(name)
            yield index
            atomic_write(self._index_path(name), orjson.dumps(index, option=orjson.OPT_INDENT_2))

    def names(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "registry.json").exists())

    def register(self, name: str, model: nn.Module, card: ModelCard, note: str = "",
                 status: str = "candidate") -> VersionInfo:
        """Save a new version as a candidate (it serves nothing until promoted), or as already ``rejected``: an
        attempt kept with its metrics as a record, never a candidate."""
        if status not in ("candidate", "rejected"):
            raise RegistryError(f"a new version is a candidate or rejected, not {status!r}")
        with self._locked(name, create=True) as index:
            version = max(map(int, index["versions"]), default=0) + 1
            save_artifact(self._dir(name) / f"v{version:04d}", model, card)
            index["versions"][str(version)] = {
                "status": status, "created_at": card.created_at, "metrics": card.metrics, "note": note,
            }
            if name.startswith(STATION_PREFIX) and len(card.stations) == 1:
                index["station"] = card.stations[0]  # the id itself: station_model_name() is lossy
            self._event(index, "register", version, note)
        return self.info(name, version)

    @staticmethod
    def _info(index: dict, name: str, version: int) -> VersionInfo:
        """A version's entry of an index already read (one file read serves a whole listing)."""
        v = index["versions"].get(str(version))
        if v is None:
            raise RegistryError(f"{name} has no version {version}")
        return VersionInfo(name, version, v["status"], v["created_at"], v["metrics"], v.get("note", ""))

    def info(self, name: str, version: int) -> VersionInfo:
        return self._info(self._read(name), name, version)

    def versions(self, name: str) -> list[VersionInfo]:
        index = self._read(name)
        return [self._info(index, name, int(v)) for v in sorted(index["versions"], key=int)]

    def champion(self, name: str) -> VersionInfo | None:
        index = self._read(name)
        return None if index["champion"] is None else self._info(index, name, index["champion"])

    def station_champions(self) -> dict[str, VersionInfo]:
        """Stations served by a fine-tuned model of their own: station id -> that model's champion.
        Every other station is served by the global model."""
        out: dict[str, VersionInfo] = {}
        for name in self.names():
            if not name.startswith(STATION_PREFIX):
                continue
            index = self._read(name)
            if index["champion"] is not None and index.get("station") is not None:
                out[index["station"]] = self._info(index, name, index["champion"])
        return out

    def path(self, name: str, version: int) -> Path:
        return self._dir(name) / f"v{version:04d}"

    def card(self, name: str, version: int) -> ModelCard:
        return read_card(self.path(name, version))

    def load(self, name: str, version: int | None = None, device: str | torch.device = "cpu"):
        """Load a version (default: the champion) as ``(model, card, info)``."""
        info = self.champion(name) if version is None else self.info(name, version)
        if info is None:
            raise RegistryError(f"{name} has no champion yet: train and promote a model first")
        model, card = load_artifact(self.path(name, info.version), device)
        return model, card, info

    def promote(self, name: str, version: int, note: str = "") -> VersionInfo:
        """Make ``version`` the champion; the artifact is verified first so a corrupt one never serves."""
        self.info(name, version)  # "no version N" before looking for its files
        load_artifact(self.path(name, version))
        with self._locked(name) as index:
            if str(version) not in index["versions"]:
                raise RegistryError(f"{name} has no version {version}")
            old = index["champion"]
            if old == version:
                return self.info(name, version)
            if old is not None:
                index["versions"][str(old)]["status"] = "retired"
                index["history"].append(old)
            index["champion"] = version
            index["versions"][str(version)]["status"] = "champion"
            self._event(index, "promote", version, note, previous=old)
        return self.info(name, version)

    def reject(self, name: str, version: int, note: str = "") -> VersionInfo:
        with self._locked(name) as index:
            if str(version) not in index["versions"]:
                raise RegistryError(f"{name} has no version {version}")
            index["versions"][str(version)]["status"] = "rejected"
            index["versions"][str(version)]["note"] = note
            self._event(index, "reject", version, note)
        return self.info(name, version)

    def rollback(self, name: str, note: str = "") -> VersionInfo:
        """Restore the previous champion; the current one is marked rejected."""
        with self._locked(name) as index:
            history = index["history"]
            while history:
                previous = history.pop()
                try:
                    load_artifact(self.path(name, previous))
                except ArtifactError:
                    continue
                current = index["champion"]
                if current is not None:
                    index["versions"][str(current)]["status"] = "rejected"
                index["champion"] = previous
                index["versions"][str(previous)]["status"] = "champion"
                self._event(index, "rollback", previous, note, previous=current)
                break
            else:
                raise RegistryError(f"{name}: no earlier champion to roll back to")
        return self.info(name, previous)

    def retire(self, name: str, note: str = "") -> VersionInfo:
        """Withdraw the champion without a successor (a station model: the station falls back to the global one)."""
        with self._locked(name) as index:
            current = index["champion"]
            if current is None:
                raise RegistryError(f"{name} has no champion to retire")
            index["versions"][str(current)]["status"] = "retired"
            index["history"].append(current)
            index["champion"] = None
            self._event(index, "retire", current, note)
        return self.info(name, current)

    def events(self, name: str) -> list[dict]:
        return list(self._read(name)["events"])

    @staticmethod
    def _event(index: dict, action: str, version: int, note: str, previous: int | None = None) -> None:
        index["events"].append({
            "at": datetime.now(UTC).isoformat(timespec="seconds"), "action": action,
            "version": version, "previous": previous, "note": note,
        })

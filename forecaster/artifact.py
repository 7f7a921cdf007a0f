"""A trained model on disk: weights in safetensors plus a JSON card that says how to use them.

Loading never unpickles: the card is JSON, the weights are safetensors, and the model is rebuilt from
the card's architecture. Anything that does not fit (checksum, keys, shapes) is refused by name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from forecaster.dataset import DataConfig
from forecaster.models import ModelConfig, build_model
from forecaster.windows import Normalizer

CARD_FORMAT = 1
WEIGHTS = "model.safetensors"
CARD = "card.json"


class ArtifactError(ValueError):
    """An artifact that is missing, corrupt or does not match its card."""


@dataclass
class ModelCard:
    model: ModelConfig
    data: DataConfig
    normalizer: Normalizer
    cadence_s: int
    stations: list[str] = field(default_factory=list)
    training_span: tuple[str, str] | None = None
    data_hash: str | None = None
    metrics: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    parent: str | None = None  # what a fine-tuned model started from
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    weights_sha256: str | None = None

    def to_dict(self) -> dict:
        return {
            "format": CARD_FORMAT,
            "model": self.model.to_dict(),
            "data": self.data.to_dict(),
            "normalizer": self.normalizer.to_dict(),
            "cadence_s": self.cadence_s,
            "stations": self.stations,
            "training_span": list(self.training_span) if self.training_span else None,
            "data_hash": self.data_hash,
            "metrics": self.metrics,
            "train": self.train,
            "parent": self.parent,
            "created_at": self.created_at,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, d: dict) -> ModelCard:
        if d.get("format") != CARD_FORMAT:
            raise ArtifactError(f"unsupported card format {d.get('format')!r} (expected {CARD_FORMAT})")
        return cls(
            model=ModelConfig.from_dict(d["model"]),
            data=DataConfig.from_dict(d["data"]),
            normalizer=Normalizer.from_dict(d["normalizer"]),
            cadence_s=int(d["cadence_s"]),
            stations=list(d.get("stations", [])),
            training_span=tuple(d["training_span"]) if d.get("training_span") else None,
            data_hash=d.get("data_hash"),
            metrics=d.get("metrics", {}),
            train=d.get("train", {}),
            parent=d.get("parent"),
            created_at=d["created_at"],
            weights_sha256=d.get("weights_sha256"),
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_artifact(directory: str | Path, model: nn.Module, card: ModelCard) -> Path:
    """Write weights then card (the card last, so a half-written artifact has no card and is refused)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = directory / f".{WEIGHTS}.tmp"
    save_file(tensors, str(tmp), metadata={"kind": card.model.kind})
    os.replace(tmp, directory / WEIGHTS)
    card.weights_sha256 = _sha256(directory / WEIGHTS)
    _atomic_write(directory / CARD, orjson.dumps(card.to_dict(), option=orjson.OPT_INDENT_2))
    return directory


def read_card(directory: str | Path) -> ModelCard:
    path = Path(directory) / CARD
    if not path.exists():
        raise ArtifactError(f"{directory}: no {CARD} (not a model artifact, or an interrupted save)")
    try:
        return ModelCard.from_dict(orjson.loads(path.read_bytes()))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: corrupt model card: {exc}") from exc


def load_artifact(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from its card and load the weights; refuse anything that does not match."""
    directory = Path(directory)
    card = read_card(directory)
    weights = directory / WEIGHTS
    if not weights.exists():
        raise ArtifactError(f"{directory}: {WEIGHTS} is missing")
    if card.weights_sha256 and _sha256(weights) != card.weights_sha256:
        raise ArtifactError(f"{weights}: checksum does not match the card (corrupt or replaced weights)")
    try:
        tensors = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{weights}: unreadable safetensors file: {exc}") from exc
    model = build_model(card.model)
    expected = model.state_dict()
    missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or extra:
        raise ArtifactError(
            f"{weights}: weights do not match the card's {card.model.kind} architecture "
            f"(missing {sorted(missing)}, unexpected {sorted(extra)})"
        )
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            need = tuple(expected[name].shape)
            raise ArtifactError(f"{weights}: {name} has shape {tuple(t.shape)}, the card's model needs {need}")
        if not torch.isfinite(t).all():
            raise ArtifactError(f"{weights}: {name} holds NaN or infinite values")
    model.load_state_dict(tensors)
    return model.to(device).eval(), card

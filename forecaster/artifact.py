"""A trained model on disk: weights in safetensors plus a JSON card that says how to use them.

Loading never unpickles: the card is JSON, the weights are safetensors, and the model is rebuilt from
the card's architecture. Anything that does not fit (checksum, keys, shapes) is refused by name.

Two required checksums make a hand-edited or damaged artifact fail like any corrupt one:

- ``weights_sha256``: SHA-256 (hex) of ``model.safetensors``.
- ``card_sha256``: SHA-256 (hex) of every other field of ``card.json`` (``weights_sha256`` included), as
  compact JSON with sorted keys: ``orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)`` over the parsed
  object less ``card_sha256``. Whitespace and key order in the file do not matter; any value does.

They catch edits and corruption, not a forger who recomputes them: they are not a signature. A card
written before ``card_sha256`` existed is refused too; once its weights are checked against its
``weights_sha256``, ``python -m forecaster.artifact DIR`` seals it (see :func:`seal_card`).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from forecaster.calibration import BandCalibration
from forecaster.dataset import DataConfig
from forecaster.models import ModelConfig, build_model
from forecaster.windows import Normalizer

CARD_FORMAT = 1  # card_sha256 is an added required field: cards stay readable by older releases
WEIGHTS = "model.safetensors"
CARD = "card.json"
CARD_CHECKSUM = "card_sha256"
_HEX64 = re.compile(r"[0-9a-f]{64}")


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
    calibration: BandCalibration | None = None  # band shifts from the validation span (None on old cards)
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
            **({"calibration": self.calibration.to_dict()} if self.calibration else {}),
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
            calibration=BandCalibration.from_dict(d.get("calibration")),
            created_at=d["created_at"],
            weights_sha256=d.get("weights_sha256"),
        )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def card_checksum(fields: dict) -> str:
    """The ``card_sha256`` of a card's parsed JSON fields (any ``card_sha256`` among them is left out)."""
    body = {k: v for k, v in fields.items() if k != CARD_CHECKSUM}
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _card_bytes(fields: dict) -> bytes:
    """The file content of a card: its fields, then its checksum over them."""
    fields = orjson.loads(orjson.dumps(fields))  # as a reader will parse them (tuples -> lists, NaN -> null)
    fields[CARD_CHECKSUM] = card_checksum(fields)
    return orjson.dumps(fields, option=orjson.OPT_INDENT_2)


def atomic_write(path: Path, data: bytes) -> None:
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
    atomic_write(directory / CARD, _card_bytes(card.to_dict()))
    return directory


def _card_fields(path: Path) -> dict:
    """The card's parsed JSON object, refused unless it is one with a well-formed ``weights_sha256``."""
    try:
        fields = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: corrupt model card: {exc}") from exc
    if not isinstance(fields, dict):
        raise ArtifactError(f"{path}: corrupt model card: not a JSON object")
    if not (isinstance(fields.get("weights_sha256"), str) and _HEX64.fullmatch(fields["weights_sha256"])):
        raise ArtifactError(f"{path}: corrupt model card: weights_sha256 is missing or not a SHA-256 hex digest")
    return fields


def read_card(directory: str | Path) -> ModelCard:
    """The card of an artifact, verified against its ``card_sha256`` (the weights are checked on load)."""
    path = Path(directory) / CARD
    if not path.exists():
        raise ArtifactError(f"{directory}: no {CARD} (not a model artifact, or an interrupted save)")
    fields = _card_fields(path)
    stored = fields.get(CARD_CHECKSUM)
    if stored is None:
        raise ArtifactError(
            f"{path}: no {CARD_CHECKSUM} (a card written before card checksums were required, or edited): "
            f"retrain or re-register the model, or check it and seal it with `python -m forecaster.artifact "
            f"{path.parent}`"
        )
    if stored != card_checksum(fields):
        raise ArtifactError(f"{path}: {CARD_CHECKSUM} does not match the card's content (edited or corrupt card)")
    return _parse_card(path, fields)


def _parse_card(path: Path, fields: dict) -> ModelCard:
    try:
        return ModelCard.from_dict(fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{path}: corrupt model card: {exc}") from exc


def load_artifact(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from its card and load the weights; refuse anything that does not match."""
    directory = Path(directory)
    card = read_card(directory)
    return _load_weights(directory, card, device), card


def _load_weights(directory: Path, card: ModelCard, device: str | torch.device = "cpu") -> nn.Module:
    """The card's model with the weights of ``directory``, which must match its ``weights_sha256`` and shapes."""
    weights = directory / WEIGHTS
    if not weights.exists():
        raise ArtifactError(f"{directory}: {WEIGHTS} is missing")
    if _sha256(weights) != card.weights_sha256:
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
    return model.to(device).eval()


def seal_card(directory: str | Path) -> bool:
    """Add the ``card_sha256`` of a card written before it existed; False when it already has a valid one.

    Only the card is rewritten, and only after the weights are checked against its ``weights_sha256`` and the
    model loads. Whether the card's other fields are the ones its trainer wrote cannot be checked: seal only
    cards you trust (a model of yours or the shipped one), else retrain.
    """
    directory = Path(directory)
    path = directory / CARD
    if not path.exists():
        raise ArtifactError(f"{directory}: no {CARD} (not a model artifact, or an interrupted save)")
    fields = _card_fields(path)
    if fields.get(CARD_CHECKSUM) is not None:
        read_card(directory)  # a card whose checksum fails is refused, never resealed
        return False
    _load_weights(directory, _parse_card(path, fields))
    atomic_write(path, _card_bytes(fields))
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m forecaster.artifact DIR...``: seal cards written before ``card_sha256`` existed."""
    dirs = sys.argv[1:] if argv is None else argv
    usage = "usage: python -m forecaster.artifact ARTIFACT_DIR... (adds card_sha256 to trusted older cards)"
    if dirs in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not dirs or any(d.startswith("-") for d in dirs):
        print(usage, file=sys.stderr)
        return 2
    for d in dirs:
        try:
            print(f"{d}: {'sealed' if seal_card(d) else 'already sealed'}")
        except ArtifactError as exc:
            print(f"python -m forecaster.artifact: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

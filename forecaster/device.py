"""Where models run: the device a name means here, and the precision each device computes in.

One place for both, so training, evaluation and serving agree: CUDA runs under bf16 autocast, the CPU in
float32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is refused plainly."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available (install a CUDA build of torch)")
    return torch.device(name)


def autocast(device: torch.device) -> AbstractContextManager:
    """bf16 autocast on CUDA (Hopper/Ampere run it at full speed, and the models train stably in it)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()

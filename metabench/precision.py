"""Mixed precision on CUDA (``train.precision=bf16|fp16|fp32``): autocast around the learner's
forward, a gradient scaler for fp16; fp32 is a no-op."""

from __future__ import annotations

import contextlib

import torch

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if DTYPES[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A scaler that only acts for fp16, where small gradients would underflow."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")

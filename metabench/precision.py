"""Mixed precision (``train.precision=bf16|fp16|fp32``): autocast around the learner's forward
and evaluation, one code path on CPU and CUDA, fp32 master weights, a gradient scaler for fp16;
fp32 is a no-op. bf16 on CPU only where the CPU computes it natively."""

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


def native_bf16_cpu() -> bool:
    """Whether this CPU has bf16 arithmetic (AVX512-BF16 or AMX); elsewhere autocast emulates
    bf16 by conversions and runs slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)

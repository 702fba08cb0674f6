"""Validation before any work: everything a config can be checked for from its values alone
(sizes, keys, kinds, numbers float32 can hold), the device and precision, and the data."""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from metabench.backbones.norms import NORMS
from metabench.build import build_data, build_learner, episode_spec, resolve_device
from metabench.distributed import SINGLE, World
from metabench.errors import ConfigError, UserError
from metabench.precision import DTYPES, native_bf16_cpu

TRAIN_KEYS = {"iterations", "meta_batch", "lr", "lr_decay_every", "lr_decay", "weight_decay",
              "grad_clip", "log_every", "eval_every", "val_episodes", "resume",
              "evaluate_at_end", "task_batching", "channels_last", "precision", "optimizer",
              "lr_schedule", "compile", "divergence_factor", "lr_min", "hypergrad_lr",
              "keep_top"}
OPTIMIZERS = ("adam", "sgd", "sgd_hd")
LR_SCHEDULES = ("step", "linear", "cosine")
EVAL_KEYS = {"episodes", "batch", "seed", "val_seed", "ensemble_top"}
POSITIVE = ["data.ways", "data.shots", "data.queries", "data.train_ways", "data.train_shots",
            "data.train_queries", "train.iterations", "train.meta_batch", "train.log_every",
            "train.eval_every", "train.val_episodes", "eval.episodes", "eval.batch"]
# (key, lowest allowed, whether the lowest is allowed itself); None values are checked elsewhere
NUMBERS = [("train.lr", 0.0, False), ("train.lr_decay", 0.0, False),
           ("train.weight_decay", 0.0, True), ("train.grad_clip", 0.0, True),
           ("train.lr_min", 0.0, True), ("train.hypergrad_lr", 0.0, True)]
# Training computes in float32 (max 3.4e38); a setting near that overflows in the first step
# (Adam divides the rate by 1 - beta1 = 0.1), so any float beyond 1e30 is refused up front.
FLOAT_LIMIT = 1e30
SECTIONS = ("train", "eval", "algo", "backbone", "data")


def check_precision(cfg: DictConfig, device: torch.device) -> list[str]:
    p = cfg.train.get("precision", "fp32")
    if p not in DTYPES:
        return [f"train.precision={p} is not one of: {', '.join(DTYPES)}"]
    if p == "fp32" or device.type == "cuda":
        return []
    if p == "bf16" and device.type == "cpu":
        if native_bf16_cpu():
            return []
        return [f"train.precision=bf16 on CPU needs native bf16 (AVX512-BF16 or AMX); this CPU "
                f"({torch.backends.cpu.get_cpu_capability()}) would emulate it, slower than "
                "fp32: use train.precision=fp32"]
    return [f"train.precision={p} needs a CUDA device (device={cfg.device} runs on "
            f"{device.type}); use train.precision=fp32 (or bf16 on a CPU with native bf16)"]



def check_numbers(cfg: DictConfig) -> list[str]:
    """Every float of the run's sections finite and within float32's usable range; rates,
    decays and clips in their ranges."""
    problems = []
    for section in SECTIONS:
        node = OmegaConf.to_container(cfg.get(section, {}), resolve=True)
        for key, v in _leaves(node, section):
            if isinstance(v, float) and not math.isfinite(v):
                problems.append(f"{key}={v} must be a finite number")
            elif isinstance(v, float) and abs(v) > FLOAT_LIMIT:
                problems.append(f"{key}={v} is out of range: training computes in float32, "
                                f"so numbers must be at most {FLOAT_LIMIT:g} in size")
    for key, low, inclusive in NUMBERS:
        v = OmegaConf.select(cfg, key)
        if v is None or f"{key}=" in " ".join(problems):
            continue
        if (isinstance(v, bool) or not isinstance(v, (int, float))
                or v < low or (v == low and not inclusive)):
            relation = "at least" if inclusive else "greater than"
            problems.append(f"{key}={v} must be a number {relation} {low:g}")
    factor = cfg.train.get("divergence_factor")
    if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                               or not factor > 1):
        problems.append(f"train.divergence_factor={factor} must be a number above 1, or null "
                        "to turn the divergence guard off")
    return problems


def _leaves(node: Any, prefix: str):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{prefix}[{i}]")
    else:
        yield prefix, node


def check_static(cfg: DictConfig) -> list[str]:
    """Problems visible from the config alone: sizes, unknown keys, numbers, algorithm/data
    kinds."""
    problems = check_numbers(cfg)
    for key in POSITIVE:
        v = OmegaConf.select(cfg, key)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            problems.append(f"{key}={v} must be a positive integer")
    for key in ("train.keep_top", "eval.ensemble_top"):
        v = OmegaConf.select(cfg, key, default=0)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            problems.append(f"{key}={v} must be a non-negative integer")
    for section, allowed in (("train", TRAIN_KEYS), ("eval", EVAL_KEYS)):
        for k in sorted(set(cfg.get(section, {}).keys()) - allowed):
            problems.append(f"{section}.{k} is not a known key "
                            f"(known: {', '.join(sorted(allowed))})")
    for key, allowed_values, default in (("optimizer", OPTIMIZERS, "adam"),
                                         ("lr_schedule", LR_SCHEDULES, "step")):
        v = cfg.train.get(key, default)
        if v not in allowed_values:
            problems.append(f"train.{key}={v} is not one of: {', '.join(allowed_values)}")
    log_model = cfg.get("logger", {}).get("log_model", False)
    if not (log_model is False or log_model in ("best", "last")):
        shown = str(log_model).lower() if isinstance(log_model, bool) else log_model
        problems.append(f"logger.log_model={shown} is not one of: best, last, false")
    try:
        cls = get_class(cfg.algo._target_)
    except Exception:
        return problems + [f"algo._target_={cfg.algo._target_} cannot be imported"]
    norm = cfg.backbone.get("norm", "none")
    if norm in NORMS and norm not in cls.norms:
        problems.append(f"algo={cfg.algo.name} does not support backbone.norm={norm} "
                        f"(supported: {', '.join(cls.norms)})")
    kind = cfg.data.kind
    if kind not in cls.kinds:
        problems.append(f"algo={cfg.algo.name} does not handle {kind} data (data={cfg.data.name})")
    if not cls.any_ways and kind == "classification" and cfg.data.ways != cfg.data.train_ways:
        problems.append(f"algo={cfg.algo.name} has a fixed {cfg.data.train_ways}-way head: "
                        f"data.ways={cfg.data.ways} must equal the training ways")
    return problems


def check_data(cfg: DictConfig, data: Any, splits: tuple[str, ...]) -> list[str]:
    problems = []
    for split in splits:
        training = split == "train"
        prefix = "data.train_" if training else "data."
        problems += data.problems(split, episode_spec(cfg, training), prefix)
    return list(dict.fromkeys(problems))


def raise_problems(problems: list[str]) -> None:
    if problems:
        raise ConfigError("\n".join(problems))


def validate(cfg: DictConfig, splits: tuple[str, ...], world: World = SINGLE,
             datasets: dict[str, Any] | None = None) -> tuple[Any, torch.device]:
    """Every check a run makes before it starts, in stages (config, device, data), each stage
    raising one ConfigError with a line per problem; returns the data and the device.
    ``datasets`` caches loaded data by source config (a sweep checks many jobs on one set)."""
    problems = check_static(cfg)
    if world.distributed and cfg.train.meta_batch % world.size:
        problems.append(f"train.meta_batch={cfg.train.meta_batch} must be a multiple of the "
                        f"{world.size} processes torchrun started (each takes an equal share "
                        "of the tasks)")
    raise_problems(problems)
    device = resolve_device(str(cfg.device))
    if world.distributed and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    raise_problems(check_precision(cfg, device))
    key = json.dumps(OmegaConf.to_container(cfg.data.source, resolve=True), sort_keys=True)
    data = datasets.get(key) if datasets is not None else None
    if data is None:
        data = build_data(cfg)
        if datasets is not None:
            datasets[key] = data
    raise_problems(check_data(cfg, data, splits))
    return data, device


def check_support_floor(cfg: DictConfig, learner: Any, data: Any,
                        splits: tuple[str, ...]) -> list[str]:
    """``norm=support``: every norm layer sees enough support values at the run's support
    sizes (a forward of zeros, so the refusal comes before any work)."""
    if learner.norm != "support" or len(data.input_shape) != 3:
        return []
    problems = []
    device = next(learner.parameters()).device
    for split in splits:
        spec = episode_spec(cfg, split == "train")
        try:
            with torch.no_grad():
                learner.backbone(torch.zeros(spec.ways * spec.shots, *data.input_shape,
                                             device=device))
        except ValueError as e:
            problems.append(f"{str(e).splitlines()[0]} ({split} episodes: {spec.ways}-way "
                            f"{spec.shots}-shot)")
    return list(dict.fromkeys(problems))


def job_problems(cfg: DictConfig, splits: tuple[str, ...],
                 datasets: dict[str, Any] | None = None) -> list[str]:
    """What a run of ``cfg`` would refuse to start with, as lines (none: it would start). The
    learner is built too, for its argument checks, without touching the global RNG."""
    try:
        data, _ = validate(cfg, splits, datasets=datasets)
        with torch.random.fork_rng(devices=[]):
            learner = build_learner(cfg, data)
        raise_problems(check_support_floor(cfg, learner, data, splits))
    except UserError as e:
        return str(e).splitlines() or [type(e).__name__]
    return []

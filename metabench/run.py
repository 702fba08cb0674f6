"""Runs training or evaluation: validation (checks.py) and building (build.py) first, then the
loop, checkpoints, loggers and results files."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:  # optional: seeded and checkpointed for code that draws from it
    import numpy as np
except ImportError:  # pragma: no cover
    np = None
import torch
from omegaconf import DictConfig, OmegaConf

from metabench import artifacts, distributed
from metabench.algorithms.base import MetaLearner
from metabench.build import (  # noqa: F401 (build, build_data: the API tests and scripts use)
    build,
    build_data,
    build_learner,
    build_optimizer,
    channels_last,
    episode_spec,
    sampler,
)
from metabench.checkpoint import load_checkpoint, save_checkpoint
from metabench.checks import (  # noqa: F401 (check_static: API)
    check_static,
    check_support_floor,
    raise_problems,
    validate,
)
from metabench.distributed import World
from metabench.ensemble import Ensemble, keep_top, top_checkpoints
from metabench.errors import ConfigError, Interrupted, UserError
from metabench.evaluation import run_episodes, summarize
from metabench.files import atomic_write, atomic_write_json
from metabench.loggers import JsonlLogger, Logger, MultiLogger, WandbLogger
from metabench.loop import LoopSettings, fit
from metabench.uncertainty import UNCERTAINTY_KEYS, pooled_reliability


def prepare(cfg: DictConfig, splits: tuple[str, ...], world: World = distributed.SINGLE
            ) -> tuple[Any, MetaLearner, torch.device]:
    """Validate, load data and build the learner; raises ConfigError/DataError before any work.
    Under torchrun each rank takes the CUDA device of its local rank."""
    data, device = validate(cfg, splits, world)
    learner = build_learner(cfg, data).to(device)
    raise_problems(check_support_floor(cfg, learner, data, splits))
    if channels_last(cfg, data):
        learner = learner.to(memory_format=torch.channels_last)
    return data, learner, device


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state a run touches (numpy's too, for code that draws from it)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "sampler": generator.get_state()}
    if np is not None:
        _, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {"keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "numpy" in state and np is not None:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["keys"].numpy().astype("uint32"), n["pos"],
                             n["has_gauss"], n["gauss"]))
    generator.set_state(state["sampler"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def run_name(cfg: DictConfig) -> str:
    d = cfg.data
    shape = f"{d.ways}w{d.shots}s" if cfg.data.kind == "classification" else f"{d.shots}shot"
    return f"{cfg.algo.name}-{d.name}-{shape}-seed{cfg.seed}"


def run_tags(cfg: DictConfig) -> list[str]:
    d = cfg.data
    return [cfg.algo.name, d.name, cfg.backbone.name, f"{d.ways}-way", f"{d.shots}-shot",
            f"seed{cfg.seed}"]


def make_logger(cfg: DictConfig, run_dir: Path, say: Callable[[str], None], append: bool,
                run_id: str | None, group: str | None) -> tuple[Logger, str | None]:
    jsonl = JsonlLogger(run_dir / "metrics.jsonl", append=append)
    if cfg.logger.name != "wandb":
        return jsonl, None
    wb = wandb_logger(cfg, run_dir, run_id, group, "train", say)
    return MultiLogger(jsonl, wb), getattr(wb, "id", None)


def wandb_logger(cfg: DictConfig, run_dir: Path, run_id: str | None, group: str | None,
                 job_type: str, say: Callable[[str], None]) -> WandbLogger:
    """The W&B run of ``cfg``: its name, tags and group, continued when ``run_id`` is known."""
    lg = cfg.logger
    return WandbLogger(run_dir, OmegaConf.to_container(cfg, resolve=True), project=lg.project,
                       name=run_name(cfg), group=lg.group or group,
                       tags=run_tags(cfg) + list(lg.tags), mode=lg.mode, entity=lg.entity,
                       run_id=run_id, job_type=job_type, say=say)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop logged points after ``step`` so a resumed run does not log them twice."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            if json.loads(ln).get("step", 0) <= step:
                keep.append(ln)
        except json.JSONDecodeError:  # a line cut short by the kill
            continue
    atomic_write(path, lambda f: f.write("".join(ln + "\n" for ln in keep).encode()))


def train(cfg: DictConfig, run_dir: Path, say: Callable[[str], None] = print,
          on_step: Callable[[int, dict[str, float]], None] | None = None,
          group: str | None = None) -> dict[str, Any]:
    """Meta-train as ``cfg`` says, writing config, metrics and checkpoints under ``run_dir``.
    Under torchrun (see distributed.py) only rank 0 writes, into rank 0's ``run_dir``."""
    world = distributed.from_env()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    if np is not None:
        np.random.seed(cfg.seed)
    data, learner, device = prepare(cfg, ("train", "val", "test"), world)
    distributed.init(world, device)
    try:
        return _train(cfg, run_dir, data, learner, device, world, say, on_step, group)
    finally:
        distributed.shutdown(world)


def _train(cfg: DictConfig, run_dir: Path, data: Any, learner: MetaLearner,
           device: torch.device, world: World, say: Callable[[str], None],
           on_step: Callable[[int, dict[str, float]], None] | None,
           group: str | None) -> dict[str, Any]:
    distributed.broadcast_parameters(learner, world)
    run_dir = Path(distributed.broadcast_object(str(run_dir), world))
    t = cfg.train
    optimizer, scheduler = build_optimizer(cfg, learner)
    generator = torch.Generator().manual_seed(cfg.seed)
    ckpt_dir = run_dir / "checkpoints"
    start, best, run_id, reference, earlier = 0, -math.inf, None, None, 0.0
    last = ckpt_dir / "last.pt"
    if t.resume and last.exists():
        blob = load_checkpoint(last)
        learner.load_state_dict(blob["model"])
        optimizer.load_state_dict(blob["optimizer"])
        if scheduler is not None and blob.get("scheduler"):
            scheduler.load_state_dict(blob["scheduler"])
        set_rng_state(blob["rng"], generator)
        start, best, run_id = blob["step"], blob["best_val"], blob.get("wandb_id")
        reference = blob.get("val_reference")
        earlier = float(blob.get("seconds", 0.0))  # the interrupted segments' training time
        if world.is_main:
            _truncate_metrics(run_dir / "metrics.jsonl", start)
            say(f"resuming from {last} at step {start}")
    config = OmegaConf.to_container(cfg, resolve=True)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "config.yaml",
                     lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True).encode()))
        logger, run_id = make_logger(cfg, run_dir, say, append=start > 0, run_id=run_id,
                                     group=group)
    else:
        logger = MultiLogger()  # logs nothing: rank 0 logs the all-reduced metrics

    info = data_info(data)

    def save(step: int, best_val: float, is_best: bool, val_reference: float | None,
             score: float | None = None) -> None:
        if not world.is_main:
            return
        state = {"model": learner.state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict() if scheduler else None, "step": step,
                 "best_val": best_val, "rng": rng_state(generator), "config": config,
                 "wandb_id": run_id, "val_reference": val_reference, "data_info": info,
                 "seconds": earlier + time.perf_counter() - started}
        save_checkpoint(last, state)
        if is_best:
            save_checkpoint(ckpt_dir / "best.pt", state)
        if score is not None and t.get("keep_top", 0) > 0:
            keep_top(ckpt_dir, int(t.keep_top), step, score, state)

    settings = LoopSettings(t.iterations, t.meta_batch, t.log_every, t.eval_every,
                            t.val_episodes, cfg.eval.batch, cfg.eval.val_seed, t.grad_clip,
                            t.get("precision", "fp32"), world,
                            t.get("divergence_factor", 1e4))
    train_sampler = sampler(cfg, data, "train", device)
    val_sampler = sampler(cfg, data, "val", device)
    started = time.perf_counter()  # with ``earlier``: every segment of a resumed run
    try:
        # train.compile: torch.compile the learner; checkpoints still come from ``learner``
        model = torch.compile(learner) if t.get("compile", False) else learner
        try:
            out = fit(model, optimizer, scheduler, train_sampler, val_sampler, settings,
                      generator, logger, save, start_step=start, best_val=best,
                      on_step=on_step, val_reference=reference)
        except UserError as e:  # stopped (diverged, disk full, Ctrl-C): say so for the report
            if world.is_main:
                stopped_summary(run_dir, e)
            raise
        out["seconds"] = earlier + time.perf_counter() - started
        if not world.is_main:
            return out
        kind_acc = data.kind == "classification"
        best_val = out["best_val"] if kind_acc else -out["best_val"]
        logger.summary({"val/best": best_val, "train/seconds": out["seconds"]})
        out["best_val"] = best_val
        atomic_write_json({"finished": True, "iterations": int(t.iterations),
                           "seconds": out["seconds"], "best_val": best_val},
                          run_dir / "summary.json")
        if t.evaluate_at_end:
            try:
                out["test"] = evaluate_loaded(cfg, data, learner, device,
                                              load_checkpoint(ckpt_dir / "best.pt"),
                                              ckpt_dir / "best.pt")
            except KeyboardInterrupt:  # Ctrl-C / SIGTERM: training itself is complete
                raise Interrupted(f"interrupted during the test, after training finished: "
                                  f"test with metabench evaluate checkpoint="
                                  f"{ckpt_dir / 'best.pt'}") from None
            metric = out["test"]["metric"]
            logger.summary({f"test/{metric}": out["test"]["mean"],
                            f"test/{metric}_ci95": out["test"]["ci95"],
                            **{f"protocol/{k}": v for k, v in protocol(cfg, learner).items()}})
        artifacts.log_model(cfg, logger, ckpt_dir, best_val, out.get("test"))  # logger.log_model
    finally:
        logger.close()
    return out


def data_info(data: Any) -> dict[str, Any]:
    """What building the learner needs from the data, kept in checkpoints so that
    ``metabench.load`` can rebuild a model without the dataset."""
    info = {"kind": data.kind, "input_shape": [int(v) for v in data.input_shape]}
    if data.kind == "classification":
        info["train_classes"] = int(data.classes("train"))
    return info


def stopped_summary(run_dir: Path, e: UserError) -> None:
    """``summary.json`` of a run that stopped early: why, and whether it can resume."""
    status = "interrupted" if isinstance(e, Interrupted) else "failed"
    with contextlib.suppress(UserError):  # the disk that is full cannot take this either
        atomic_write_json({"finished": False, "status": status, "error": str(e)},
                          run_dir / "summary.json")


def results_name(cfg: DictConfig, blob: dict[str, Any]) -> str:
    """``results.json`` for the test setting the run was trained for; for another setting
    ``results_<ways>w<shots>s.json``, so evaluating a checkpoint in several settings keeps
    each result (and the run's own, which ``metabench report`` reads)."""
    saved = OmegaConf.create(blob["config"])
    spec, own = episode_spec(cfg, False), episode_spec(saved, False)
    top = int(cfg.eval.get("ensemble_top", 0))
    suffix = f"_top{top}" if top > 0 else ""  # an ensemble's result beside the single one's
    classes = _episode_classes(cfg)
    if classes != _episode_classes(saved):
        suffix = f"_{classes}{suffix}"  # e.g. results_within_alphabet.json
    if cfg.data.name != saved.data.name:  # another dataset: results_digits.json
        suffix = f"_{cfg.data.name}{suffix}"
    if (spec.ways, spec.shots) == (own.ways, own.shots):
        return f"results{suffix}.json"
    return f"results_{spec.ways}w{spec.shots}s{suffix}.json"


def _episode_classes(cfg: DictConfig) -> str:
    return str(cfg.data.get("episode_classes", "random"))


def protocol(cfg: DictConfig, learner: MetaLearner) -> dict[str, Any]:
    """How a test number was measured, recorded with it: whether a query's prediction may
    depend on the other queries (``transductive``), the norm mode, the data split, how a task's
    classes are drawn (``episode_classes``) and whether rotations are classes, the episode
    sizes and count, and the seed that fixes the test episodes."""
    spec = episode_spec(cfg, False)
    return {"transductive": bool(learner.transductive()), "norm": learner.norm,
            "split": str(cfg.data.get("split", "default")),
            "episode_classes": _episode_classes(cfg),
            "rotations": bool(cfg.data.get("rotations", False)), "ways": spec.ways,
            "shots": spec.shots, "queries": spec.queries, "episodes": int(cfg.eval.episodes),
            "test_seed": int(cfg.eval.seed)}


def evaluate_loaded(cfg: DictConfig, data: Any, learner: MetaLearner, device: torch.device,
                    blob: dict[str, Any], checkpoint: Path) -> dict[str, Any]:
    """Test ``blob``'s weights on ``eval.episodes`` seeded test episodes; write the result
    next to the checkpoint (``results_name``)."""
    learner.load_state_dict(blob["model"])
    top = int(cfg.eval.get("ensemble_top", 0))
    members = top_checkpoints(Path(checkpoint).parent, top) if top > 0 else []
    scored: MetaLearner = learner
    if members:  # each member a copy of the learner with a kept checkpoint's weights
        copies = [copy.deepcopy(learner) for _ in members]
        for m, path in zip(copies, members, strict=True):
            m.load_state_dict(load_checkpoint(path)["model"])
        scored = Ensemble(copies)
    spec = episode_spec(cfg, False)
    per = run_episodes(scored, sampler(cfg, data, "test", device), cfg.eval.episodes,
                       cfg.eval.batch, cfg.eval.seed, cfg.train.get("precision", "fp32"))
    summary = summarize(per)
    classification = data.kind == "classification"
    key = "acc" if classification else "loss"
    results = {
        "metric": "accuracy" if classification else "mse",
        "mean": summary[key][0], "ci95": summary[key][1], "episodes": int(cfg.eval.episodes),
        "ways": spec.ways, "shots": spec.shots, "queries": spec.queries,
        "algo": cfg.algo.name, "data": cfg.data.name, "backbone": cfg.backbone.name,
        "seed": int(cfg.seed), "step": int(blob["step"]), "checkpoint": str(checkpoint),
        **protocol(cfg, learner),
    }
    for name in (*UNCERTAINTY_KEYS, *learner.reported):  # nll, ece / coverage; a learner's own
        if name in summary:
            results[name], results[f"{name}_ci95"] = summary[name]
    reliability = pooled_reliability(per)
    if reliability is not None:
        results["reliability"] = reliability
    if members:
        results["ensemble"] = [str(m) for m in members]
    pre = f"pre_{key}"
    if pre in summary:  # e.g. MAML: the same episodes before adaptation
        results["pre_adaptation_mean"], results["pre_adaptation_ci95"] = summary[pre]
    atomic_write_json(results, Path(checkpoint).parent / results_name(cfg, blob))
    return results


def evaluate(cfg: DictConfig, checkpoint: Path, blob: dict[str, Any],
             say: Callable[[str], None] = print) -> dict[str, Any]:
    """Test a checkpoint; with logger=wandb the result also lands in the training run's
    W&B summary (the same run id, resumed)."""
    if int(cfg.eval.get("ensemble_top", 0)) > 0:  # before any work: enough kept checkpoints
        top_checkpoints(Path(checkpoint).parent, int(cfg.eval.ensemble_top))
    data, learner, device = prepare(cfg, ("test",))
    own = learner.state_dict()
    if tuple(blob["model"].keys()) != tuple(own.keys()):
        raise ConfigError(f"checkpoint {checkpoint} does not fit algo={cfg.algo.name} "
                          f"backbone={cfg.backbone.name}")
    bad = [k for k, v in blob["model"].items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:  # e.g. data=<another dataset> of another image size for a learned init
        raise ConfigError(f"checkpoint {checkpoint} does not fit data={cfg.data.name} with "
                          f"input shape {tuple(data.input_shape)} ({bad[0]} is "
                          f"{tuple(blob['model'][bad[0]].shape)}, this data needs "
                          f"{tuple(own[bad[0]].shape)}): set data.image_size to the training's")
    results = evaluate_loaded(cfg, data, learner, device, blob, checkpoint)
    if cfg.logger.name == "wandb":
        wb = wandb_logger(cfg, Path(checkpoint).resolve().parent.parent, blob.get("wandb_id"),
                          None, "evaluate", say)
        same = cfg.data.name == blob["config"]["data"]["name"]
        t = "test" if same else f"test_{cfg.data.name}"  # another dataset beside the own
        wb.summary({f"{t}/{results['metric']}": results["mean"],
                    f"{t}/{results['metric']}_ci95": results["ci95"],
                    f"{t}/episodes": results["episodes"],
                    **{f"{t}/{k}": results[k] for k in (*UNCERTAINTY_KEYS, *learner.reported)
                       if k in results},
                    **{f"protocol/{k}": v for k, v in protocol(cfg, learner).items()}})
        wb.close()
    return results

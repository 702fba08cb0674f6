"""W&B model artifacts: logger.log_model uploads (offline: stages) the checkpoint at the end of
training, and `metabench evaluate checkpoint=wandb:...` tests one fetched through a stubbed
W&B client (never the network); bad settings and failed fetches are one line, exit code 2."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import pytest
import wandb
from wandb_records import records, run_info, summary

from metabench import run
from metabench.checkpoint import load_checkpoint
from metabench.loggers import JsonlLogger, MultiLogger

TINY = ["data=synthetic", "data.source.image_size=16", "train.iterations=4",
        "train.log_every=2", "train.eval_every=2", "train.val_episodes=4", "eval.episodes=4",
        "eval.batch=4"]
SPEC = "wandb:me/metabench/model-abc123:best"


def artifact_records(run_dir: Path, timeout: float = 60):
    """The offline run file and its artifact records. wandb-core may still be writing the file
    when ``finish()`` has returned, so this waits for its closing ``exit`` record."""
    [file] = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        try:
            recs = records(file)
        except Exception:  # empty or cut mid-chunk: still being written
            recs = []
        if (recs and recs[-1].WhichOneof("record_type") == "exit") or \
                time.monotonic() > deadline:
            break
        time.sleep(0.1)
    arts = [r.artifact for r in recs if r.WhichOneof("record_type") == "artifact"]
    return file, arts


@pytest.mark.parametrize("which", ["best", "last"])
def test_log_model_offline_stages_the_checkpoint_for_wandb_sync(which, cfg_factory, tmp_path):
    said: list[str] = []
    run_dir = tmp_path / "run"
    out = run.train(cfg_factory(*TINY, "logger=wandb", f"logger.log_model={which}"), run_dir,
                    say=said.append)
    ckpt = run_dir / "checkpoints" / f"{which}.pt"
    file, arts = artifact_records(run_dir)
    assert len(arts) == 1
    art, run_id = arts[0], run_info(file).run_id
    assert (art.name, art.type) == (f"model-{run_id}", "model")
    assert sorted(art.aliases) == sorted([which, "latest"])
    meta = json.loads(art.metadata)
    assert meta["step"] == load_checkpoint(ckpt)["step"]
    if which == "last":
        assert meta["step"] == 4
    assert (meta["algo"], meta["data"]) == ("protonet", "synthetic")
    assert meta["best_val"] == pytest.approx(out["best_val"])
    assert meta["test_accuracy"] == pytest.approx(out["test"]["mean"])
    [entry] = art.manifest.contents
    assert entry.path == f"{which}.pt"
    assert entry.digest == base64.b64encode(hashlib.md5(ckpt.read_bytes()).digest()).decode()
    # `wandb sync` uploads the staged copy: it exists, equals the checkpoint, and lies in the
    # W&B data folder the suite points at (conftest), not in the user's home
    staged = Path(entry.local_path)
    assert staged.read_bytes() == ckpt.read_bytes()
    assert staged.is_relative_to(os.environ["WANDB_DATA_DIR"])
    assert any(f"checkpoint=wandb:<entity>/metabench/model-{run_id}:{which}" in line
               and "wandb sync" in line for line in said)


def test_no_artifact_unless_asked(cfg_factory, tmp_path):
    run.train(cfg_factory(*TINY, "logger=wandb"), tmp_path / "run", say=lambda *_: None)
    assert artifact_records(tmp_path / "run")[1] == []
    run.train(cfg_factory(*TINY, "logger=none", "logger.log_model=best"), tmp_path / "none",
              say=lambda *_: None)  # valid with logger=none too, and ignored there
    assert not (tmp_path / "none" / "wandb").exists()
    assert (tmp_path / "none" / "checkpoints" / "best.pt").is_file()


def test_failed_upload_warns_and_training_still_finishes(cfg_factory, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("artifact quota exceeded")

    monkeypatch.setattr(wandb.Artifact, "add_file", broken)
    run_dir = tmp_path / "run"
    with pytest.warns(UserWarning, match=r"W&B model upload failed, .*best\.pt stays local: "
                                         "artifact quota exceeded"):
        out = run.train(cfg_factory(*TINY, "logger=wandb", "logger.log_model=best"), run_dir,
                        say=lambda *_: None)
    assert "test" in out
    assert json.loads((run_dir / "summary.json").read_text())["finished"] is True
    file, arts = artifact_records(run_dir)
    assert arts == []
    assert "val/best" in summary(file)  # the W&B run itself was still finished


def test_multilogger_forwards_log_model_and_jsonl_ignores_it(tmp_path):
    calls = []

    class Recorder:
        def log_model(self, path, aliases, metadata):
            calls.append((path, aliases, metadata))

    jsonl = JsonlLogger(tmp_path / "m.jsonl")
    MultiLogger(jsonl, Recorder()).log_model(tmp_path / "best.pt", ["best", "latest"], {"s": 1})
    jsonl.close()
    assert calls == [(tmp_path / "best.pt", ["best", "latest"], {"s": 1})]
    assert (tmp_path / "m.jsonl").read_text() == ""


def cli(args: list[str], cwd: Path, capfd, monkeypatch) -> tuple[int, str, str]:
    """``metabench ARGS`` in this process (so the stubbed W&B client is the one it uses)."""
    from hydra.core.global_hydra import GlobalHydra

    from metabench import cli as cli_module

    monkeypatch.chdir(cwd)
    capfd.readouterr()
    GlobalHydra.instance().clear()
    try:
        code = cli_module.main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        GlobalHydra.instance().clear()
    out, err = capfd.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


@pytest.mark.parametrize(("logger", "value"), [("wandb", "maybe"), ("none", "true")])
def test_bad_log_model_is_one_line_before_any_work(logger, value, tmp_path, capfd, monkeypatch):
    run_dir = tmp_path / "run"
    code, out, err = cli(["train", "data=synthetic", f"logger={logger}",
                          f"logger.log_model={value}", f"hydra.run.dir={run_dir}"],
                         tmp_path, capfd, monkeypatch)
    assert code == 2
    assert error_lines(err) == [f"error: logger.log_model={value} is not one of: best, last, "
                                "false"]
    assert not run_dir.exists()


class FakeApi:
    """wandb.Api as far as resolve_checkpoint uses it; ``download`` writes ``files`` into the
    root it is given, as the real client does."""

    calls: list[tuple[str, str | None]] = []
    files: dict[str, bytes] = {}

    def __init__(self, *args, **kwargs):
        pass

    def artifact(self, name: str, type: str | None = None):
        FakeApi.calls.append((name, type))
        return self

    version = "v3"

    def download(self, root: str) -> str:
        Path(root).mkdir(parents=True, exist_ok=True)
        for name, data in FakeApi.files.items():
            (Path(root) / name).write_bytes(data)
        return root


@pytest.fixture
def fake_wandb(monkeypatch, tmp_path):
    monkeypatch.setattr(wandb, "Api", FakeApi)
    monkeypatch.setenv("METABENCH_CACHE", str(tmp_path / "cache"))
    FakeApi.calls, FakeApi.files = [], {}
    return FakeApi


def test_evaluate_a_checkpoint_from_wandb(fake_wandb, cfg_factory, tmp_path, capfd,
                                          monkeypatch):
    run.train(cfg_factory(*TINY, "logger=none"), tmp_path / "run", say=lambda *_: None)
    local = tmp_path / "run" / "checkpoints" / "best.pt"
    fake_wandb.files = {"best.pt": local.read_bytes()}
    code, out, err = cli(["evaluate", f"checkpoint={SPEC}", "eval.episodes=6", "logger=none"],
                         tmp_path, capfd, monkeypatch)
    assert code == 0, err
    assert fake_wandb.calls == [("me/metabench/model-abc123:best", "model")]
    fetched = tmp_path / "cache" / "wandb" / "me" / "metabench" / "model-abc123" / "v3" / "best.pt"
    assert fetched.read_bytes() == local.read_bytes()
    assert f"fetched {SPEC} (v3) into {fetched}" in out
    result = [ln for ln in out.splitlines() if ln.startswith("result: ")]
    assert len(result) == 1 and "protonet synthetic 5-way 1-shot: accuracy" in result[0]
    assert result[0].endswith(f"checkpoint {fetched}")
    results = json.loads((fetched.parent / "results.json").read_text())
    assert results["checkpoint"] == str(fetched) and results["episodes"] == 6
    assert f"results written to {fetched.parent / 'results.json'}" in out
    # the training run's own result (evaluate_at_end) is not the one written
    assert json.loads((local.parent / "results.json").read_text())["episodes"] == 4


class Unreachable(FakeApi):
    def artifact(self, name, type=None):
        raise ConnectionError("Max retries exceeded with url: /graphql (Name or service not "
                              "known)\nmore detail")


class NoLogin(FakeApi):
    def __init__(self, *args, **kwargs):
        raise RuntimeError("api_key not configured (no-tty). call wandb.login(key=...)")


@pytest.mark.parametrize(("spec", "api", "files", "expected"), [
    (SPEC, Unreachable, {}, f"cannot fetch checkpoint {SPEC} from W&B: Max retries exceeded"),
    (SPEC, NoLogin, {}, f"cannot fetch checkpoint {SPEC} from W&B: api_key not configured"),
    (SPEC, FakeApi, {"README.md": b"hi"}, "W&B artifact me/metabench/model-abc123:best holds "
                                          "no .pt file: expected one metabench checkpoint"),
    (SPEC, FakeApi, {"a.pt": b"1", "b.pt": b"2"}, "holds a.pt, b.pt: expected one"),
    ("wandb:model-abc123", FakeApi, {}, "checkpoint=wandb:model-abc123: expected "
                                        "wandb:<entity>/<project>/<artifact>:<alias>"),
])
def test_failed_fetch_is_one_line_and_exit_2(spec, api, files, expected, fake_wandb, tmp_path,
                                             capfd, monkeypatch):
    monkeypatch.setattr(wandb, "Api", api)
    fake_wandb.files = files
    code, out, err = cli(["evaluate", f"checkpoint={spec}", "logger=none"], tmp_path, capfd,
                         monkeypatch)
    assert code == 2
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert "result:" not in out and "Traceback" not in out + err
    assert not list((tmp_path / "cache").rglob("results*.json"))
    if spec == "wandb:model-abc123":
        assert fake_wandb.calls == []  # refused before any W&B call


def test_a_plain_path_never_calls_wandb(fake_wandb, monkeypatch):
    from metabench.artifacts import resolve_checkpoint

    assert resolve_checkpoint("outputs/r/checkpoints/best.pt") == \
        Path("outputs/r/checkpoints/best.pt")
    assert fake_wandb.calls == []

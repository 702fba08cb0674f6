"""`metabench predict`: a trained model classifies a folder of images end to end (table,
predictions.csv); bad input is one line and exit code 2, with nothing written."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_cfg
from helpers import write_class_folders
from test_cli import metabench_in_process

from metabench import run

SIZE = 28


def train(root: Path, run_dir: Path, algo: str) -> Path:
    cfg = make_cfg(f"algo={algo}", "data=folder", f"data.root={root}", "data.channels=1",
                   f"data.image_size={SIZE}", "data.ways=3", "data.shots=2", "data.queries=2",
                   "logger=none", "device=cpu", "train.iterations=2", "train.eval_every=2",
                   "train.val_episodes=2", "train.meta_batch=1", "train.evaluate_at_end=false")
    run.train(cfg, run_dir, say=lambda *_: None)
    return run_dir / "checkpoints" / "best.pt"


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("predict")
    data = write_class_folders(base / "data", {"train": 4, "val": 3, "test": 4}, size=SIZE)
    support = base / "support"
    queries = base / "queries"
    for c in range(3):  # 3 classes of the test split, named by the user, 2 shots each
        for i in range(2):
            (support / f"class_{'abc'[c]}").mkdir(parents=True, exist_ok=True)
            shutil.copy(data / "test" / f"c{c}" / f"{i:02d}.png",
                        support / f"class_{'abc'[c]}" / f"{i:02d}.png")
        queries.mkdir(exist_ok=True)
        shutil.copy(data / "test" / f"c{c}" / "05.png", queries / f"q{c}.png")
    return {"base": base, "data": data, "support": support, "queries": queries,
            "protonet": train(data, base / "proto", "protonet"),
            "maml": train(data, base / "maml", "maml")}


def test_predict_end_to_end(setup, tmp_path):
    """The real command: exit 0, a table row per query, and a CSV whose rows are the API's."""
    import metabench

    out = tmp_path / "preds.csv"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-m", "metabench", "predict",
                           f"checkpoint={setup['protonet']}", f"support={setup['support']}",
                           f"query={setup['queries']}", f"out={out}", "device=cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "predicted class" in proc.stdout and "q2.png" in proc.stdout
    assert f"predictions for 3 images written to {out} (checkpoint {setup['protonet']})" \
        in proc.stdout
    rows = list(csv.DictReader(out.open()))
    assert [Path(r["file"]).name for r in rows] == ["q0.png", "q1.png", "q2.png"]
    assert list(rows[0]) == ["file", "predicted", "probability", "p_class_a", "p_class_b",
                             "p_class_c"]
    model = metabench.load(setup["protonet"])
    files = sorted(setup["support"].glob("*/*.png"))
    task = model.adapt(files, [f.parent.name for f in files])
    queries = sorted(setup["queries"].glob("*.png"))
    assert [r["predicted"] for r in rows] == task.predict(queries)
    proba = task.predict_proba(queries)
    for r, p in zip(rows, proba.tolist(), strict=True):
        assert float(r["probability"]) == pytest.approx(max(p), abs=1e-5)
        assert sum(float(r[f"p_class_{k}"]) for k in "abc") == pytest.approx(1, abs=1e-5)


def bad(setup, tmp_path, capfd, monkeypatch, *, checkpoint="protonet", support=None):
    out = tmp_path / "preds.csv"
    proc = metabench_in_process("predict", f"checkpoint={setup[checkpoint]}",
                                f"support={support or setup['support']}",
                                f"query={setup['queries']}", f"out={out}", "device=cpu",
                                cwd=tmp_path, capfd=capfd, monkeypatch=monkeypatch)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert not out.exists()
    return lines[0]


def test_empty_class_folder(setup, tmp_path, capfd, monkeypatch):
    support = tmp_path / "support"
    shutil.copytree(setup["support"], support)
    (support / "class_d").mkdir()
    line = bad(setup, tmp_path, capfd, monkeypatch, support=support)
    assert line == f"error: support class folder {support / 'class_d'} holds no images"


def test_non_image_file(setup, tmp_path, capfd, monkeypatch):
    support = tmp_path / "support"
    shutil.copytree(setup["support"], support)
    (support / "class_a" / "notes.txt").write_text("labels from the lab book")
    line = bad(setup, tmp_path, capfd, monkeypatch, support=support)
    assert line == (f"error: {support / 'class_a' / 'notes.txt'} is not an image (expected "
                    ".png, .jpg or .jpeg files)")
    (support / "class_a" / "notes.txt").unlink()
    (support / "class_a" / "broken.png").write_text("not a png")
    line = bad(setup, tmp_path, capfd, monkeypatch, support=support)
    assert line.startswith(f"error: could not decode image {support / 'class_a' / 'broken.png'}")


def test_more_ways_than_the_head(setup, tmp_path, capfd, monkeypatch):
    support = tmp_path / "support"
    shutil.copytree(setup["support"], support)
    shutil.copytree(support / "class_a", support / "class_d")
    line = bad(setup, tmp_path, capfd, monkeypatch, checkpoint="maml", support=support)
    assert line == "error: this model has a fixed 3-way head: it cannot classify into 4 classes"


def test_missing_argument_and_unknown_key(setup, tmp_path, capfd, monkeypatch):
    proc = metabench_in_process("predict", f"checkpoint={setup['protonet']}", cwd=tmp_path,
                                capfd=capfd, monkeypatch=monkeypatch)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: predict needs support=, query= (see metabench " \
                                  "predict --help)"
    proc = metabench_in_process("predict", "checkpoint=x", "support=y", "query=z", "shots=5",
                                cwd=tmp_path, capfd=capfd, monkeypatch=monkeypatch)
    assert proc.returncode == 2 and "shots is not a predict argument" in proc.stderr


def readme_api_example() -> str:
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("### In Python: `metabench.load`", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_readme_api_example_runs(setup, tmp_path, monkeypatch, capsys):
    """The README's Python example, as written, on a checkpoint and folders at its paths."""
    import metabench

    monkeypatch.chdir(tmp_path)
    (tmp_path / "outputs/my-run/checkpoints").mkdir(parents=True)
    shutil.copy(setup["protonet"], tmp_path / "outputs/my-run/checkpoints/best.pt")
    shutil.copytree(setup["support"], tmp_path / "my_support")
    shutil.copytree(setup["queries"], tmp_path / "my_queries")
    exec(compile(readme_api_example(), "README.md", "exec"), {})
    printed = capsys.readouterr().out.splitlines()
    model = metabench.load(setup["protonet"])
    files = sorted(setup["support"].glob("*/*.png"))
    task = model.adapt(files, [f.parent.name for f in files])
    assert printed[0] == "['class_a', 'class_b', 'class_c']"
    assert printed[1] == str(task.predict(sorted(setup["queries"].glob("*.png"))))
    assert printed[2].startswith("tensor([[")

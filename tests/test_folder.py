"""The image-folder dataset: layout, decoding (PIL's Lanczos resize), the cache, one-line errors,
the miniImageNet preset's class-count check, and a CLI training run on a written folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from metabench import run
from metabench.data import folder
from metabench.data.folder import load_folder
from metabench.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg", ".PNG")


def write_image(path: Path, width: int, height: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("RGB", (width, height), bytes(pixels.flatten().tolist())).save(path)


def write_folder(root: Path, classes=(3, 2, 2), per_class: int = 4) -> Path:
    """PNG and JPG images of different sizes; train's first class has one image more."""
    for s, (split, n) in enumerate(zip(("train", "val", "test"), classes, strict=True)):
        for c in range(n):
            extra = 1 if split == "train" and c == 0 else 0
            for i in range(per_class + extra):
                seed = 1000 * s + 100 * c + i
                write_image(root / split / f"class{c}" / f"img{i}{SUFFIXES[i % 4]}",
                            13 + 5 * i, 11 + 3 * c, seed)
    (root / "train" / "class0" / "notes.txt").write_text("not an image")
    (root / "train" / "class1" / ".hidden.png").write_bytes(b"ignored")
    return root


@pytest.fixture
def image_folder(tmp_path) -> Path:
    return write_folder(tmp_path / "images")


def pil_reference(path: Path, size: int, mode: str) -> torch.Tensor:
    img = Image.open(path).convert(mode).resize((size, size), Image.LANCZOS)
    t = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8)
    return t.view(size, size, len(mode)).permute(2, 0, 1)


def test_loads_class_major_uint8(image_folder, tmp_path):
    data = load_folder(str(image_folder), image_size=12, cache_dir=str(tmp_path / "c"))
    # train: class0 has 5 images, class1/2 have 4: every class keeps its first 4
    assert data.splits["train"].shape == (3, 4, 3, 12, 12)
    assert data.splits["val"].shape == data.splits["test"].shape == (2, 4, 3, 12, 12)
    assert all(x.dtype == torch.uint8 for x in data.splits.values())
    assert data.input_shape == (3, 12, 12) and data.name == "folder"
    gray = load_folder(str(image_folder), image_size=10, channels=1,
                       cache_dir=str(tmp_path / "c"))
    assert gray.splits["test"].shape == (2, 4, 1, 10, 10)


@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (1, "L")])
@pytest.mark.parametrize("index", [(0, 0), (1, 1), (0, 2)], ids=["png", "jpg", "jpeg"])
def test_pixels_match_pil_resize(image_folder, tmp_path, channels, mode, index):
    data = load_folder(str(image_folder), image_size=12, channels=channels,
                       cache_dir=str(tmp_path / "c"))
    c, i = index
    path = image_folder / "val" / f"class{c}" / f"img{i}{SUFFIXES[i]}"
    assert torch.equal(data.splits["val"][c, i], pil_reference(path, 12, mode))


def test_cache_reused_then_rebuilt_when_a_file_changes(image_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_folder(str(image_folder), image_size=12, cache_dir=str(cache))
    assert len(list(cache.glob("folder-*.pt"))) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(folder, "decode_image", no_decode)
    again = load_folder(str(image_folder), image_size=12, cache_dir=str(cache))
    for s in ("train", "val", "test"):
        assert torch.equal(first.splits[s], again.splits[s])
    monkeypatch.undo()

    changed = image_folder / "test" / "class1" / "img2.jpeg"
    write_image(changed, 30, 30, seed=99)
    rebuilt = load_folder(str(image_folder), image_size=12, cache_dir=str(cache))
    assert torch.equal(rebuilt.splits["test"][1, 2], pil_reference(changed, 12, "RGB"))
    assert not torch.equal(rebuilt.splits["test"][1, 2], first.splits["test"][1, 2])
    assert torch.equal(rebuilt.splits["train"], first.splits["train"])
    files = list(cache.glob("folder-*.pt"))
    assert len(files) == 1  # the stale file was replaced, not kept beside the new one

    files[0].write_bytes(files[0].read_bytes()[:100])  # a truncated cache is rebuilt
    repaired = load_folder(str(image_folder), image_size=12, cache_dir=str(cache))
    assert torch.equal(repaired.splits["test"], rebuilt.splits["test"])


def error_of(root, tmp_path, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        load_folder(str(root), image_size=12, cache_dir=str(tmp_path / "c"), **kwargs)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_root(tmp_path):
    msg = error_of(tmp_path / "nowhere", tmp_path)
    assert f"folder not found: {tmp_path / 'nowhere'} is not a folder" in msg
    assert "data.root" in msg
    assert "needs data.root=" in error_of("", tmp_path)


def test_missing_split(image_folder, tmp_path):
    (image_folder / "val").rename(image_folder / "validation")
    assert f"{image_folder} has no val/ folder" in error_of(image_folder, tmp_path)


def test_split_without_classes(image_folder, tmp_path):
    for f in (image_folder / "test").rglob("*"):
        if f.is_file():
            f.unlink()
    for d in (image_folder / "test").iterdir():
        d.rmdir()
    assert f"{image_folder / 'test'} holds no class folders" in error_of(image_folder, tmp_path)


def test_empty_class_folder(image_folder, tmp_path):
    (image_folder / "val" / "class9").mkdir()
    (image_folder / "val" / "class9" / "readme.txt").write_text("no images")
    msg = error_of(image_folder, tmp_path)
    assert f"class folder {image_folder / 'val' / 'class9'} holds no .png/.jpg/.jpeg" in msg


def test_class_with_one_image(image_folder, tmp_path):
    write_image(image_folder / "test" / "lonely" / "a.png", 8, 8, seed=1)
    msg = error_of(image_folder, tmp_path)
    assert f"{image_folder / 'test' / 'lonely'} holds 1 image; a class needs at least 2" in msg


def test_unreadable_image_is_named(image_folder, tmp_path):
    bad = image_folder / "train" / "class2" / "img1.jpg"
    bad.write_bytes(b"this is not a jpeg")
    assert f"could not decode image {bad}" in error_of(image_folder, tmp_path)


def test_bad_settings(image_folder, tmp_path):
    assert "data.channels=2 is not one of: 1, 3" in error_of(image_folder, tmp_path, channels=2)


def test_expected_class_counts(image_folder, tmp_path):
    msg = error_of(image_folder, tmp_path, expect_classes=[64, 16, 20])
    assert msg == f"{image_folder}: expected 64/16/20 classes in train/val/test, found 3/2/2"
    data = load_folder(str(image_folder), image_size=12, cache_dir=str(tmp_path / "c"),
                       expect_classes=[3, 2, 2])
    assert data.classes("train") == 3


def test_miniimagenet_preset(cfg_factory, image_folder, monkeypatch):
    monkeypatch.setenv("METABENCH_MINIIMAGENET", str(image_folder))
    cfg = cfg_factory("data=miniimagenet", "logger=none")
    d = cfg.data
    assert (d.name, d.root, d.image_size, d.channels) == ("miniimagenet", str(image_folder), 84, 3)
    assert list(d.source.expect_classes) == [64, 16, 20]
    with pytest.raises(DataError) as e:
        run.build_data(cfg)
    assert str(e.value) == f"{image_folder}: expected 64/16/20 classes in train/val/test, " \
        "found 3/2/2"  # one line, which the CLI prints as it is
    cfg = cfg_factory("data=miniimagenet", "logger=none", "data.source.expect_classes=null",
                      "data.image_size=12")
    data = run.build_data(cfg)
    assert data.name == "miniimagenet" and data.splits["val"].shape == (2, 4, 3, 12, 12)
    monkeypatch.delenv("METABENCH_MINIIMAGENET")
    assert cfg_factory("data=miniimagenet", "logger=none").data.root == "data/miniimagenet"


def metabench(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "metabench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_trains_protonet_on_a_folder(image_folder, tmp_path):
    run_dir = tmp_path / "run"
    r = metabench("train", "data=folder", f"data.root={image_folder}", "data.image_size=16",
                  "data.ways=2", "data.queries=2", "algo=protonet", "logger=none",
                  "train.iterations=4", "train.log_every=2", "train.eval_every=2",
                  "train.val_episodes=4", "eval.episodes=6", "eval.batch=3",
                  f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((run_dir / "checkpoints" / "results.json").read_text())
    assert (results["data"], results["algo"], results["ways"], results["episodes"]) == \
        ("folder", "protonet", 2, 6)
    assert 0.0 <= results["mean"] <= 1.0
    assert (run_dir / "checkpoints" / "best.pt").exists()


"""The benchmark datasets in their distributed formats, from miniatures built here: the
restricted unpickler, miniImageNet's and tieredImageNet's pickles, CIFAR-FS and FC100 from a
CIFAR-100 archive, CUB-200-2011 from its archive; class counts, pixels, the cache (a second load
opens no source), one-line errors, the shipped split lists, and the configs."""

from __future__ import annotations

import collections
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from format_miniatures import (
    COARSE,
    FINE,
    PARENT,
    SPLITS,
    dump,
    md5,
    pixels,
    write_cifar,
    write_cub,
    write_mini,
    write_tiered,
)
from PIL import Image
from torchvision.datasets import CIFAR100

from metabench.build import build_data
from metabench.data import arrays, cifar, folder, imagenet
from metabench.data.cifar import load_cifarfs, load_fc100
from metabench.data.cub import load_cub
from metabench.data.imagenet import load_miniimagenet, load_tieredimagenet
from metabench.data.safe_pickle import safe_load
from metabench.data.splits import read_split
from metabench.errors import DataError

REPO = Path(__file__).resolve().parents[1]


def error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def forbid(monkeypatch, *targets) -> None:
    """Make the readers/decoders raise: a load that still works used the cache."""
    def boom(*a, **k):
        raise AssertionError("a source was read again although the cache is valid")
    for module, name in targets:
        monkeypatch.setattr(module, name, boom)


# --- the restricted unpickler -------------------------------------------------------------

class Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.mark.parametrize("payload", ["reduce", "os_global", "eval", "popen"])
def test_safe_load_refuses_code(tmp_path, payload):
    pwned = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    if payload == "reduce":
        dump({"image_data": Evil(pwned)}, path)
        refused = f"{os.system.__module__}.system"  # posix.system on Linux
    else:
        module, name, arg = {"os_global": ("os", "system", f"touch {pwned}"),
                             "eval": ("builtins", "eval", "1+1"),
                             "popen": ("subprocess", "Popen", "true")}[payload]
        path.write_bytes(f"c{module}\n{name}\n(S'{arg}'\ntR.".encode())
        refused = f"{module}.{name}"
    msg = error(safe_load, path)
    assert msg == (f"{path} is not a plain data pickle: it refers to {refused}; refused (only "
                   "numpy arrays and plain containers are read)")
    assert not pwned.exists()


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_load_reads_numpy_and_containers(tmp_path, protocol):
    obj = {"a": pixels(2, 3, 0), "f": np.arange(4, dtype=np.float32).reshape(2, 2),
           "s": [np.int64(3), np.float32(1.5)], "set": {1, 2}, "b": b"\x00\xff",
           "o": collections.OrderedDict(x=(1, None, True)), "names": ["n01", "n02"]}
    back = safe_load(dump(obj, tmp_path / "ok.pkl", protocol))
    assert back.keys() == obj.keys()
    assert np.array_equal(back["a"], obj["a"]) and back["a"].dtype == np.uint8
    assert np.array_equal(back["f"], obj["f"])
    assert back["s"] == obj["s"] and type(back["s"][0]) is np.int64
    assert (back["set"], back["b"], back["o"], back["names"]) == \
        (obj["set"], obj["b"], obj["o"], obj["names"])


def test_safe_load_python2_pickles(tmp_path):
    # numpy 1.x / Python 2 module names, and a Python-2 str key (BINSTRING) decoded as latin1
    old = pickle.dumps(np.arange(6, dtype=np.int32), protocol=2).replace(
        b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in old
    (tmp_path / "old.pkl").write_bytes(old)
    assert safe_load(tmp_path / "old.pkl").tolist() == list(range(6))
    (tmp_path / "py2.pkl").write_bytes(b"\x80\x02}q\x00U\x05labelq\x01K\x07s.")
    assert safe_load(tmp_path / "py2.pkl") == {"label": 7}
    (tmp_path / "cut.pkl").write_bytes(old[:30])
    assert "cut.pkl is not a readable pickle" in error(safe_load, tmp_path / "cut.pkl")


def test_no_plain_pickle_load_in_the_package():
    plain = re.compile(r"pickle\.(load|loads|Unpickler)\(")
    offenders = [str(p) for p in (REPO / "metabench").rglob("*.py")
                 if plain.search(p.read_text()) and p.name != "safe_pickle.py"]
    assert offenders == []


# --- miniImageNet -------------------------------------------------------------------------

def test_miniimagenet_pickles(tmp_path, monkeypatch):
    src = write_mini(tmp_path / "mini")
    cache = str(tmp_path / "cache")
    data = load_miniimagenet(str(tmp_path / "mini"), image_size=10, cache_dir=cache,
                             expect_classes=[3, 2, 2])
    assert [tuple(data.splits[s].shape) for s in SPLITS] == \
        [(3, 4, 3, 10, 10), (2, 4, 3, 10, 10), (2, 4, 3, 10, 10)]
    images, class_dict = src["val"]
    row = class_dict[sorted(class_dict)[1]][2]  # classes sorted, rows in listed order
    assert torch.equal(data.splits["val"][1, 2], torch.from_numpy(images[row]).permute(2, 0, 1))
    forbid(monkeypatch, (imagenet, "safe_load"))
    again = load_miniimagenet(str(tmp_path / "mini"), image_size=10, cache_dir=cache,
                              expect_classes=[3, 2, 2])
    assert all(torch.equal(data.splits[s], again.splits[s]) for s in SPLITS)
    assert error(load_miniimagenet, str(tmp_path / "mini"), image_size=10, cache_dir=cache) == \
        f"{tmp_path / 'mini'}: expected 64/16/20 classes in train/val/test, found 3/2/2"
    monkeypatch.undo()
    small = load_miniimagenet(str(tmp_path / "mini"), image_size=6, cache_dir=cache,
                              expect_classes=None)  # resized as image files are
    ref = Image.fromarray(images[row]).resize((6, 6), Image.LANCZOS)
    assert torch.equal(small.splits["val"][1, 2],
                       torch.from_numpy(np.array(ref)).permute(2, 0, 1))


def test_miniimagenet_layouts(tmp_path):
    root = tmp_path / "mini"
    root.mkdir()
    msg = error(load_miniimagenet, str(root), cache_dir=str(tmp_path / "c"))
    assert msg == (f"miniimagenet not found in {root}: expected either train/ val/ test/ class "
                   "folders or the pickles mini-imagenet-cache-{train,validation,test}.pkl")
    write_mini(root)
    (root / "mini-imagenet-cache-test.pkl").unlink()
    assert "but not mini-imagenet-cache-test.pkl" in error(load_miniimagenet, str(root))
    for split in SPLITS:  # folders win over pickles
        for c in range(2):
            for i in range(3):
                (root / split / f"c{c}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels(1, 8, i)[0]).save(root / split / f"c{c}" / f"{i}.png")
    data = load_miniimagenet(str(root), image_size=8, cache_dir=str(tmp_path / "c"),
                             expect_classes=None)
    assert data.splits["test"].shape == (2, 3, 3, 8, 8)


# --- tieredImageNet -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["png", "npz"])
def test_tieredimagenet(tmp_path, monkeypatch, fmt):
    root = tmp_path / "tiered" / "tiered-imagenet"  # learn2learn's extracted layout
    src = write_tiered(root, fmt)
    kw = dict(image_size=12, cache_dir=str(tmp_path / "cache"), expect_classes=[3, 2, 2])
    data = load_tieredimagenet(str(tmp_path / "tiered"), **kw)
    # per split, every class keeps the smallest class's 3 images
    assert [tuple(data.splits[s].shape) for s in SPLITS] == \
        [(3, 3, 3, 12, 12), (2, 3, 3, 12, 12), (2, 3, 3, 12, 12)]
    labels, images = src["test"]
    row = np.flatnonzero(labels == 1)[2]
    assert torch.equal(data.splits["test"][1, 2], torch.from_numpy(images[row]).permute(2, 0, 1))
    forbid(monkeypatch, (imagenet, "safe_load"), (imagenet.np, "load"))
    again = load_tieredimagenet(str(tmp_path / "tiered"), **kw)
    assert all(torch.equal(data.splits[s], again.splits[s]) for s in SPLITS)
    monkeypatch.undo()
    assert error(load_tieredimagenet, str(tmp_path / "tiered"), image_size=12) == \
        f"{tmp_path / 'tiered'}: expected 351/97/160 classes in train/val/test, found 3/2/2"
    (root / "val_labels.pkl").unlink()
    assert "no val_labels.pkl with its images" in error(load_tieredimagenet,
                                                        str(tmp_path / "tiered"), **kw)


# --- CIFAR-FS and FC100 -------------------------------------------------------------------

def cifar_image(root: Path, name: str, row: int) -> torch.Tensor:
    blob = pickle.loads((root / "cifar-100-python" / name).read_bytes())
    return torch.from_numpy(blob["data"][row].reshape(3, 32, 32).copy())


def test_cifarfs(tmp_path, monkeypatch):
    archive = write_cifar(tmp_path / "c100")
    kw = dict(cache_dir=str(tmp_path / "cache"), md5=md5(archive))
    data = load_cifarfs(str(tmp_path / "c100"), **kw)
    assert [tuple(data.splits[s].shape) for s in SPLITS] == \
        [(64, 3, 3, 32, 32), (16, 3, 3, 32, 32), (20, 3, 3, 32, 32)]
    val = read_split("cifarfs", "val")
    k = FINE.index(val[5])  # each class: its 2 train images, then its test image
    assert torch.equal(data.splits["val"][5, 1], cifar_image(tmp_path / "c100", "train", 2 * k + 1))
    assert torch.equal(data.splits["val"][5, 2], cifar_image(tmp_path / "c100", "test", k))
    forbid(monkeypatch, (cifar, "safe_load"), (cifar, "unpack"))
    again = load_cifarfs(str(tmp_path / "c100"), **kw)
    assert all(torch.equal(data.splits[s], again.splits[s]) for s in SPLITS)


def test_cifar_archive_checks(tmp_path, monkeypatch):
    root = tmp_path / "c100"
    root.mkdir()
    msg = error(load_cifarfs, str(root))
    assert msg.startswith("CIFAR-100 not found: place cifar-100-python.tar.gz or its extracted "
                          "cifar-100-python/{train,test,meta} ") and "data.download=true" in msg
    calls = []

    def offline(url, root, filename, md5):  # data.download=true, without a network
        calls.append((url, filename, md5))
        raise OSError("network unreachable")

    monkeypatch.setattr(arrays, "download_and_extract_archive", offline)
    assert error(load_cifarfs, str(root), download=True) == (
        "could not download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz to "
        f"{root}: network unreachable")
    assert calls == [(CIFAR100.url, "cifar-100-python.tar.gz", CIFAR100.tgz_md5)]
    archive = write_cifar(root, drop=("otter",))
    assert error(load_cifarfs, str(root)) == (
        f"{archive} fails its md5 check (expected eb9058c3a382ffc7106e4002c42a8d85, the "
        "official archive's); not extracted: replace it, or extract it yourself")
    assert not (root / "cifar-100-python").exists()
    assert error(load_cifarfs, str(root), md5=md5(archive), cache_dir=str(tmp_path / "c")) == (
        f"{root} (Bertinetto et al. split, metabench/data/splits/cifarfs/): expected 64/16/20 "
        "classes in train/val/test, found 64/15/20; not in cifar-100-python: otter")
    assert error(load_fc100, str(root), cache_dir=str(tmp_path / "c")).startswith(
        f"{root} (Oreshkin et al. split, metabench/data/splits/fc100/): expected 60/20/20 "
        "classes in train/val/test, found 60/20/19")


def test_fc100(tmp_path):
    archive = write_cifar(tmp_path / "c100")
    data = load_fc100(str(tmp_path / "c100"), image_size=16, md5=md5(archive),
                      cache_dir=str(tmp_path / "cache"))
    assert [tuple(data.splits[s].shape) for s in SPLITS] == \
        [(60, 3, 3, 16, 16), (20, 3, 3, 16, 16), (20, 3, 3, 16, 16)]
    val = [c for c in FINE if PARENT[c] in read_split("fc100", "val")]  # in fine-label order
    k = FINE.index(val[7])
    ref = Image.fromarray(cifar_image(tmp_path / "c100", "test", k).permute(1, 2, 0).numpy())
    ref = torch.from_numpy(np.array(ref.resize((16, 16), Image.LANCZOS))).permute(2, 0, 1)
    assert torch.equal(data.splits["val"][7, 2], ref)


def test_split_lists():
    fs = {s: read_split("cifarfs", s) for s in SPLITS}
    assert [len(fs[s]) for s in SPLITS] == [64, 16, 20]
    assert sorted(fs["train"] + fs["val"] + fs["test"]) == FINE  # 100 distinct names
    fc = {s: read_split("fc100", s) for s in SPLITS}
    assert [len(fc[s]) for s in SPLITS] == [12, 4, 4]
    assert sorted(fc["train"] + fc["val"] + fc["test"]) == sorted(COARSE)
    assert fc["test"] == ["aquatic_mammals", "insects", "medium_mammals", "people"]
    cub = {s: read_split("cub", s) for s in SPLITS}
    every = sorted(cub["train"] + cub["val"] + cub["test"])
    assert [int(n[:3]) for n in every] == list(range(1, 201))  # 001..200, each once
    rule = {"train": lambda i: i % 2 == 0, "val": lambda i: i % 4 == 1,
            "test": lambda i: i % 4 == 3}  # Chen et al.'s write_CUB_filelist.py
    assert all(cub[s] == [n for i, n in enumerate(every) if rule[s](i)] for s in SPLITS)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"metabench.data.splits"' in pyproject and '"*/*.txt"' in pyproject


# --- CUB-200-2011 -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cub_archive(tmp_path_factory) -> Path:
    return write_cub(tmp_path_factory.mktemp("cub"))


def placed(archive: Path, root: Path) -> Path:
    """A copy of ``archive`` in a fresh ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(archive, root / archive.name))


def test_cub(tmp_path, monkeypatch, cub_archive):
    archive = placed(cub_archive, tmp_path / "cub")
    kw = dict(image_size=8, cache_dir=str(tmp_path / "cache"), md5=md5(archive))
    data = load_cub(str(tmp_path / "cub"), **kw)
    # 001 has a third photo: every train class keeps 2
    assert [tuple(data.splits[s].shape) for s in SPLITS] == \
        [(100, 2, 3, 8, 8), (50, 2, 3, 8, 8), (50, 2, 3, 8, 8)]
    images = tmp_path / "cub" / "CUB_200_2011" / "images"
    photo = images / "006.Least_Auklet" / "Least_Auklet_1.jpg"  # val's 2nd class
    ref = Image.open(photo).convert("RGB").resize((8, 8), Image.LANCZOS)
    assert torch.equal(data.splits["val"][1, 1], torch.from_numpy(np.array(ref)).permute(2, 0, 1))
    forbid(monkeypatch, (folder, "decode_image"))
    again = load_cub(str(tmp_path / "cub"), **kw)
    assert all(torch.equal(data.splits[s], again.splits[s]) for s in SPLITS)
    (images / "004.Groove_billed_Ani").rename(images / "removed")
    assert error(load_cub, str(tmp_path / "cub"), **kw) == (
        f"{images} (Chen et al. split, metabench/data/splits/cub/): expected 100/50/50 classes "
        "in train/val/test, found 100/50/49; missing class folders: 004.Groove_billed_Ani")


# --- the configs ----------------------------------------------------------------------------

def test_configs_compose_and_build(cfg_factory, tmp_path, cub_archive, monkeypatch):
    env = {"miniimagenet": ("METABENCH_MINIIMAGENET", "data/miniimagenet"),
           "tieredimagenet": ("METABENCH_TIEREDIMAGENET", "data/tieredimagenet"),
           "cifarfs": ("METABENCH_CIFAR", "data/cifar100"),
           "fc100": ("METABENCH_CIFAR", "data/cifar100"), "cub": ("METABENCH_CUB", "data/cub")}
    for name, (var, default) in env.items():
        monkeypatch.delenv(var, raising=False)
        assert cfg_factory(f"data={name}").data.root == default
    roots = {"cifarfs": tmp_path / "c100", "fc100": tmp_path / "c100", "cub": tmp_path / "cub",
             "miniimagenet": tmp_path / "mini", "tieredimagenet": tmp_path / "tiered"}
    sums = {"c100": md5(write_cifar(roots["cifarfs"])),
            "cub": md5(placed(cub_archive, roots["cub"]))}
    write_mini(roots["miniimagenet"], size=84)
    write_tiered(roots["tieredimagenet"], "png", size=84)
    expected = {"cifarfs": (64, 32), "fc100": (60, 32), "cub": (100, 12),
                "miniimagenet": (3, 84), "tieredimagenet": (3, 84)}
    for name, root in roots.items():
        monkeypatch.setenv(env[name][0], str(root))  # the default root
        extra = ([f"data.source.md5={sums[root.name]}"] if root.name in sums
                 else ["data.source.expect_classes=[3,2,2]"])
        size = ["data.image_size=12"] if name == "cub" else []
        cfg = cfg_factory(f"data={name}", "logger=none", *extra, *size)
        assert (cfg.data.name, cfg.data.root, cfg.data.ways) == (name, str(root), 5)
        assert cfg.data.source._target_.startswith("metabench.data.")
        if "preprocess" in cfg.data:  # inherited from data=folder, sized like the cache
            assert cfg.data.preprocess.size == cfg.data.image_size
        data = build_data(cfg)
        classes, size_px = expected[name]
        assert data.name == name and data.classes("train") == classes
        assert data.input_shape == (3, size_px, size_px)

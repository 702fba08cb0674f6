"""The Python API (metabench.load / adapt / predict / predict_proba): a model trained for a few
iterations, fed PNG files the test writes, predicts exactly what the evaluation path predicts
on the same images, for every algorithm family; bad input is one clear error."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import write_class_folders
from PIL import Image

import metabench
from metabench import run
from metabench.build import build_data
from metabench.checkpoint import load_checkpoint
from metabench.episodes import Episode
from metabench.errors import ConfigError, DataError, UserError

SIZE = 28
WAYS, SHOTS, QUERIES = 5, 5, 3
# algo -> overrides keeping a 2-iteration run small; one per family and the ones that
# override the probabilities (relation) or the sequence length (snail)
ALGOS = {
    "protonet": [],
    "matching": [],
    "relation": [],
    "maml": ["algo.eval_inner_steps=2", "train.meta_batch=1"],
    "anil": ["algo.eval_inner_steps=2", "train.meta_batch=1"],
    "reptile": ["algo.eval_inner_steps=3", "train.meta_batch=1"],
    "snail": ["train.meta_batch=1"],
    "baseline": ["algo.finetune_steps=5"],
    "baselinepp": ["algo.finetune_steps=5"],
    "metasgd": ["algo.eval_inner_steps=2", "train.meta_batch=1"],
}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """train/val/test class folders of 28x28 grayscale PNGs (6/5/5 classes, 10 images each)."""
    return write_class_folders(tmp_path_factory.mktemp("api") / "images",
                               {"train": 6, "val": 5, "test": 5}, size=SIZE)


def train_few(cfg_factory, run_dir: Path, *overrides: str):
    """A run of 2 iterations; its config and best.pt."""
    cfg = cfg_factory(*overrides, "logger=none", "device=cpu", "train.iterations=2",
                      "train.eval_every=2", "train.val_episodes=2", "train.log_every=1",
                      "train.evaluate_at_end=false", f"data.ways={WAYS}",
                      f"data.shots={SHOTS}", f"data.queries={QUERIES}")
    run.train(cfg, run_dir, say=lambda *_: None)
    return cfg, run_dir / "checkpoints" / "best.pt"


def evaluation_predictions(cfg, checkpoint: Path, x_support, x_query) -> torch.Tensor:
    """What the evaluation path predicts: the learner rebuilt from the config and the data,
    the checkpoint's weights, ``predict`` on one class-major episode in evaluation mode."""
    data = build_data(cfg)
    learner = run.build_learner(cfg, data)
    learner.load_state_dict(load_checkpoint(checkpoint)["model"])
    learner.eval()
    labels = torch.arange(WAYS)
    episode = Episode(x_support[None], labels.repeat_interleave(SHOTS)[None], x_query[None],
                      labels.repeat_interleave(QUERIES)[None], WAYS)
    torch.manual_seed(cfg.seed)  # the API seeds learners that draw (Reptile's minibatches)
    with torch.no_grad():
        return learner.predict(episode)[0]


def test_episode_from_the_cache(image_folder: Path):
    """(guard) the test split's classes decode in c0..c4 order, the images in file order."""
    from metabench.data.folder import load_folder

    data = load_folder(str(image_folder), channels=1, image_size=SIZE)
    first = Image.open(image_folder / "test/c3/00.png").tobytes()
    assert data.splits["test"][3, 0, 0].flatten().tolist() == list(first)


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_load_adapt_predict_equals_evaluation(algo, image_folder, tmp_path, cfg_factory):
    cfg, ckpt = train_few(cfg_factory, tmp_path / "run", f"algo={algo}", "data=folder",
                          f"data.root={image_folder}", "data.channels=1",
                          f"data.image_size={SIZE}", "data.train_ways=5", *ALGOS[algo])
    test = build_data(cfg).splits["test"]  # [5, 10, 1, 28, 28] uint8, classes c0..c4
    xs = test[:, :SHOTS].flatten(0, 1).float() / 255
    xq = test[:, SHOTS:SHOTS + QUERIES].flatten(0, 1).float() / 255
    expected = evaluation_predictions(cfg, ckpt, xs, xq)

    model = metabench.load(ckpt)
    # support files in an interleaved class order: adapt sorts them class-major
    files = [(image_folder / "test" / f"c{c}" / f"{i:02d}.png", f"c{c}")
             for i in range(SHOTS) for c in range(WAYS)]
    task = model.adapt([f for f, _ in files], [label for _, label in files])
    queries = [image_folder / "test" / f"c{c}" / f"{i:02d}.png"
               for c in range(WAYS) for i in range(SHOTS, SHOTS + QUERIES)]
    assert task.classes == [f"c{c}" for c in range(WAYS)]
    assert task.predict(queries) == [f"c{int(i)}" for i in expected.argmax(-1)]
    proba = task.predict_proba(queries)
    assert proba.shape == (WAYS * QUERIES, WAYS)
    torch.testing.assert_close(proba.sum(-1), torch.ones(WAYS * QUERIES))
    torch.testing.assert_close(proba, model.learner.probabilities(expected), atol=1e-5,
                               rtol=1e-4)
    # tensors are taken as model inputs (uint8 scaled by 1/255): the same predictions
    shuffled = torch.stack([test[c, i] for i in range(SHOTS) for c in range(WAYS)])
    labels = [c for _ in range(SHOTS) for c in range(WAYS)]
    from_tensors = model.adapt(shuffled, labels).predict(xq)
    assert from_tensors == expected.argmax(-1).tolist()


def omniglot_png(zip_path: Path, name: str) -> bytes:
    with zipfile.ZipFile(zip_path) as z:
        return z.read(name)


def test_omniglot_files_are_inverted_as_in_training(small_omniglot, tmp_path, cfg_factory):
    """Omniglot's raw PNGs (dark strokes) go through the checkpoint's preprocessing (28x28,
    inverted): the API's inputs equal the cached training images."""
    cfg, ckpt = train_few(cfg_factory, tmp_path / "run", "algo=protonet", "data=omniglot",
                          f"data.root={small_omniglot}", "data.split=background",
                          "data.download=false")
    model = metabench.load(ckpt)
    zip_path = small_omniglot / "images_evaluation.zip"
    with zipfile.ZipFile(zip_path) as z:
        names = sorted(n for n in z.namelist() if n.endswith(".png"))[:3]
        images = [Image.open(io.BytesIO(z.read(n))) for n in names]
    x = model.inputs(images, "query")
    cache = build_data(cfg).splits["test"]  # rotations: class 4c is character c unrotated
    torch.testing.assert_close(x, cache[0, :3].float() / 255)


@pytest.fixture(scope="module")
def protonet_ckpt(image_folder, tmp_path_factory) -> Path:
    from conftest import make_cfg

    _, ckpt = train_few(make_cfg, tmp_path_factory.mktemp("proto") / "run", "algo=protonet",
                        "data=folder", f"data.root={image_folder}", "data.channels=1",
                        f"data.image_size={SIZE}")
    return ckpt


def test_bad_input_is_one_clear_error(protonet_ckpt, image_folder, tmp_path):
    model = metabench.load(protonet_ckpt)
    files = sorted((image_folder / "test" / "c0").glob("*.png"))[:2]
    with pytest.raises(DataError, match=r"2 support inputs but 1 labels"):
        model.adapt(files, ["a"])
    with pytest.raises(DataError, match=r"has 1 class; a task needs at least 2"):
        model.adapt(files, ["a", "a"])
    with pytest.raises(DataError, match=r"have shape \[2, 3, 28, 28\]; this model takes "
                                        r"\[n, 1, 28, 28\]"):
        model.adapt(torch.zeros(2, 3, 28, 28), ["a", "b"])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(DataError, match=r"could not decode image .*notes.png"):
        model.adapt([files[0], text], ["a", "b"])
    with pytest.raises(DataError, match="the query set is empty"):
        model.adapt(files, ["a", "b"]).predict([])
    with pytest.raises(UserError):
        metabench.load(tmp_path / "missing.pt")


def test_any_ways_where_the_algorithm_allows(protonet_ckpt, image_folder):
    """A 5-way ProtoNet classifies 3 classes (and labels of any hashable type)."""
    model = metabench.load(protonet_ckpt)
    files = [image_folder / "test" / f"c{c}" / f"{i:02d}.png" for c in range(3) for i in range(2)]
    labels = [("cat", 1), ("cat", 1), 7, 7, None, None]
    task = model.adapt(files, labels)
    assert task.classes == [("cat", 1), 7, None]  # unsortable: in order of first appearance
    assert task.predict_proba(files).shape == (6, 3)
    assert set(task.predict(files)) <= {("cat", 1), 7, None}


def test_fixed_way_head_refuses_other_ways(image_folder, tmp_path, cfg_factory):
    """MAML's head has one output per training way: 3 classes on a 5-way model is refused."""
    _, ckpt = train_few(cfg_factory, tmp_path / "run", "algo=maml", "data=folder",
                        f"data.root={image_folder}", "data.channels=1",
                        f"data.image_size={SIZE}", "algo.eval_inner_steps=1",
                        "train.meta_batch=1")
    model = metabench.load(ckpt)
    files = sorted((image_folder / "test" / "c0").glob("*.png"))[:3]
    with pytest.raises(ConfigError, match="fixed 5-way head: it cannot classify into 3"):
        model.adapt(files, ["a", "b", "c"])


def test_regression_model_predicts_values(tmp_path, cfg_factory):
    """A sinusoid MAML model takes tensors: predict returns values, predict_proba refuses."""
    _, ckpt = train_few(cfg_factory, tmp_path / "run", "algo=maml", "data=sinusoid")
    model = metabench.load(ckpt)
    x = torch.linspace(-5, 5, 10)[:, None]
    task = model.adapt(x, torch.sin(x))
    out = task.predict(torch.zeros(4, 1))
    assert out.shape == (4, 1) and torch.isfinite(out).all()
    with pytest.raises(UserError, match="predict_proba needs a classification model"):
        task.predict_proba(torch.zeros(4, 1))
    with pytest.raises(DataError, match="takes tensors of shape \\[1\\], not image files"):
        model.adapt([tmp_path / "a.png"], [0.0])

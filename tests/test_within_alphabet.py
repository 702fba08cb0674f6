"""Within-alphabet episodes: every class of a task from one alphabet (a property over seeds),
the refusal when no alphabet is large enough, and the protocol recorded with a result."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from metabench import run
from metabench.data.omniglot import load_omniglot
from metabench.data.sampler import ImageClasses
from metabench.episodes import EpisodeSpec
from metabench.errors import DataError
from metabench.evaluation_config import evaluation_config
from metabench.report import protocol_label


def classes_with_groups(sizes: list[int], episode_classes: str) -> ImageClasses:
    n = sum(sizes)
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None, None].expand(n, 4, 1, 2, 2)
    groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    splits = {s: images.clone() for s in ("train", "val", "test")}
    return ImageClasses("toy", splits, {s: groups for s in splits}, episode_classes)


@pytest.mark.parametrize("seed", range(5))
def test_every_class_of_a_task_comes_from_one_alphabet(seed):
    sizes = [3, 6, 2, 8, 5]
    data = classes_with_groups(sizes, "within_alphabet")
    groups = data.groups["test"]
    ep = data.sampler("test", EpisodeSpec(4, 1, 1), torch.device("cpu")).sample(
        200, torch.Generator().manual_seed(seed))
    alphabets = groups[ep.classes]  # [tasks, ways]
    assert (alphabets == alphabets[:, :1]).all()
    assert set(alphabets[:, 0].tolist()) == {1, 3, 4}  # only the alphabets with >= 4 classes
    assert all(len(set(c)) == 4 for c in ep.classes.tolist())  # distinct classes
    # the images are the classes the episode names (class c's pixels are all c)
    assert torch.equal((ep.x_support[:, :, 0, 0, 0] * 255).round().long(), ep.classes)


def test_random_episodes_mix_alphabets():
    data = classes_with_groups([3, 6, 2, 8, 5], "random")
    ep = data.sampler("test", EpisodeSpec(4, 1, 1), torch.device("cpu")).sample(
        200, torch.Generator().manual_seed(0))
    alphabets = data.groups["test"][ep.classes]
    assert not (alphabets == alphabets[:, :1]).all()


def test_ways_beyond_the_largest_alphabet_is_one_line():
    data = classes_with_groups([3, 6, 2], "within_alphabet")
    assert data.problems("train", EpisodeSpec(7, 1, 1), "data.train_") == [
        "data.train_ways=7 exceeds the largest alphabet (6 classes) of the toy train split: "
        "data.episode_classes=within_alphabet draws a task from one alphabet"]
    assert data.problems("train", EpisodeSpec(6, 1, 1)) == []


def test_bad_choices_are_refused():
    with pytest.raises(DataError, match=r"^data.episode_classes=alphabet is not one of: random, "
                                        r"within_alphabet$"):
        classes_with_groups([3], "alphabet")
    splits = {s: torch.zeros(3, 2, 1, 2, 2, dtype=torch.uint8) for s in ("train", "val", "test")}
    with pytest.raises(DataError, match=r"needs alphabets, which folder does not have"):
        ImageClasses("folder", splits, None, "within_alphabet")


@pytest.mark.parametrize("rotations", [True, False])
def test_omniglot_groups_are_alphabets_and_rotations_stay_in_theirs(small_omniglot, tmp_path,
                                                                    rotations):
    data = load_omniglot(str(small_omniglot), split="background", rotations=rotations,
                         cache_dir=str(tmp_path / "c"), episode_classes="within_alphabet")
    r = 4 if rotations else 1
    # train = Alpha (3 characters) and Beta (2), in sorted order; val = Gamma; test = Delta
    expected = torch.tensor([0] * 3 * r + [1] * 2 * r)
    assert torch.equal(data.groups["train"] - data.groups["train"][0], expected)
    assert data.groups["val"].unique().numel() == data.groups["test"].unique().numel() == 1
    assert data.groups["test"][0] not in data.groups["train"]


def test_results_record_within_alphabet_and_keep_the_random_result(cfg_factory, small_omniglot,
                                                                   tmp_path):
    base = ["algo=protonet", "data=omniglot", f"data.root={small_omniglot}", "logger=none",
            "data.split=background", "data.ways=3", "data.train_ways=3", "data.queries=2",
            "data.train_queries=2", "train.iterations=2", "train.eval_every=2",
            "train.val_episodes=2", "eval.episodes=4", "eval.batch=2"]
    run.train(cfg_factory(*base), tmp_path, say=lambda *_: None)
    ckpt = tmp_path / "checkpoints" / "best.pt"
    blob = run.load_checkpoint(ckpt)
    own = json.loads((tmp_path / "checkpoints" / "results.json").read_text())
    assert own["episode_classes"] == "random" and own["rotations"] is True
    settings = OmegaConf.from_dotlist(["data.episode_classes=within_alphabet"])
    cfg = evaluation_config(blob["config"], settings)
    assert cfg.data.source.episode_classes == "within_alphabet"
    results = run.evaluate(cfg, ckpt, blob, say=lambda *_: None)
    saved = json.loads((tmp_path / "checkpoints" / "results_within_alphabet.json").read_text())
    assert saved["episode_classes"] == results["episode_classes"] == "within_alphabet"
    assert protocol_label(saved).endswith(", within-alphabet")
    assert not protocol_label(own).endswith(", within-alphabet")
    assert json.loads((tmp_path / "checkpoints" / "results.json").read_text()) == own


def test_old_checkpoints_without_the_key_evaluate_within_alphabet(cfg_factory, small_omniglot):
    cfg = cfg_factory("data=omniglot", f"data.root={small_omniglot}")
    saved = OmegaConf.to_container(cfg, resolve=True)
    del saved["data"]["episode_classes"], saved["data"]["source"]["episode_classes"]
    settings = OmegaConf.from_dotlist(["data.episode_classes=within_alphabet"])
    assert evaluation_config(saved, settings).data.source.episode_classes == "within_alphabet"
    assert evaluation_config(saved, OmegaConf.create({})).data.episode_classes == "random"

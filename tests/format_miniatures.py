"""Miniature copies of the benchmark datasets in their distributed formats, for
tests/test_dataset_formats.py: tiny images, few of them, the files laid out and pickled as the
real releases are."""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from metabench.data.splits import read_split

SUPERCLASSES = {  # CIFAR-100's 20 superclasses and their classes (its meta's names)
    "aquatic_mammals": "beaver dolphin otter seal whale",
    "fish": "aquarium_fish flatfish ray shark trout",
    "flowers": "orchid poppy rose sunflower tulip",
    "food_containers": "bottle bowl can cup plate",
    "fruit_and_vegetables": "apple mushroom orange pear sweet_pepper",
    "household_electrical_devices": "clock keyboard lamp telephone television",
    "household_furniture": "bed chair couch table wardrobe",
    "insects": "bee beetle butterfly caterpillar cockroach",
    "large_carnivores": "bear leopard lion tiger wolf",
    "large_man-made_outdoor_things": "bridge castle house road skyscraper",
    "large_natural_outdoor_scenes": "cloud forest mountain plain sea",
    "large_omnivores_and_herbivores": "camel cattle chimpanzee elephant kangaroo",
    "medium_mammals": "fox porcupine possum raccoon skunk",
    "non-insect_invertebrates": "crab lobster snail spider worm",
    "people": "baby boy girl man woman",
    "reptiles": "crocodile dinosaur lizard snake turtle",
    "small_mammals": "hamster mouse rabbit shrew squirrel",
    "trees": "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "vehicles_1": "bicycle bus motorcycle pickup_truck train",
    "vehicles_2": "lawn_mower rocket streetcar tank tractor",
}
COARSE = list(SUPERCLASSES)
FINE = sorted(c for v in SUPERCLASSES.values() for c in v.split())
PARENT = {c: s for s, v in SUPERCLASSES.items() for c in v.split()}
SPLITS = ("train", "val", "test")


def pixels(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def png(image: np.ndarray) -> np.ndarray:
    """As few-shot-ssl-public stores an image: its PNG bytes as a uint8 array."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return np.frombuffer(buf.getvalue(), dtype=np.uint8)


def dump(obj, path: Path, protocol: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def write_mini(root: Path, classes=(3, 2, 2), per_class: int = 4, size: int = 10) -> dict:
    """The three cache pickles; rows of a class are scattered; train's class 0 has one more."""
    out = {}
    for s, (split, name) in enumerate(zip(SPLITS, ("train", "validation", "test"), strict=True)):
        counts = [per_class + (split == "train" and c == 0) for c in range(classes[s])]
        images = pixels(sum(counts), size, seed=s)
        order = np.random.default_rng(s).permutation(len(images)).tolist()
        class_dict, start = {}, 0
        for c, n in enumerate(counts):
            class_dict[f"n0{s}{c:06d}"] = order[start:start + n]
            start += n
        dump({"image_data": images, "class_dict": class_dict},
             root / f"mini-imagenet-cache-{name}.pkl")
        out[split] = (images, class_dict)
    return out


def write_tiered(root: Path, fmt: str, classes=(3, 2, 2), size: int = 12) -> dict:
    """Labels and images per split; class c of a split holds 3 + c images, interleaved."""
    out = {}
    for s, split in enumerate(SPLITS):
        labels = [c for c in range(classes[s]) for _ in range(3 + c)]
        labels = np.array(labels, dtype=np.int32)[np.random.default_rng(s).permutation(
            len(labels))]
        images = pixels(len(labels), size, seed=10 + s)  # the true (RGB) pixels
        dump({"label_specific": labels, "label_general": labels // 2,
              "label_specific_str": [f"n1{s}{c:05d}" for c in range(classes[s])],
              "label_general_str": ["x", "y"]}, root / f"{split}_labels.pkl", protocol=2)
        if fmt == "png":
            dump([png(im) for im in images], root / f"{split}_images_png.pkl", protocol=2)
        else:  # Ren et al.'s decompressed .npz holds OpenCV's BGR order
            np.savez(root / f"{split}_images.npz", images=images[..., ::-1])
        out[split] = (labels, images)
    return out


def write_cifar(root: Path, drop: tuple[str, ...] = ()) -> Path:
    """cifar-100-python.tar.gz with 2 train and 1 test image per class (none for ``drop``),
    pickled with protocol 2 like the Python-2 originals."""
    folder = root / "stage" / "cifar-100-python"
    keep = [c for c in FINE if c not in drop]
    for name, per, seed in (("train", 2, 0), ("test", 1, 1)):
        fine = [FINE.index(c) for c in keep for _ in range(per)]
        data = pixels(len(fine), 32, seed).transpose(0, 3, 1, 2).reshape(len(fine), -1)
        dump({"batch_label": name, "fine_labels": fine, "data": data,
              "coarse_labels": [COARSE.index(PARENT[FINE[k]]) for k in fine]},
             folder / name, protocol=2)
    dump({"fine_label_names": FINE, "coarse_label_names": COARSE}, folder / "meta", protocol=2)
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as t:
        t.add(folder, arcname="cifar-100-python")
    return root / "cifar-100-python.tar.gz"


def write_cub(root: Path) -> Path:
    """CUB_200_2011.tgz: the 200 folders of the split lists, 2 small JPEGs each (3 in 001)."""
    names = sorted(n for s in SPLITS for n in read_split("cub", s))
    stage = root / "stage"
    for k, name in enumerate(names):
        folder = stage / "CUB_200_2011" / "images" / name
        folder.mkdir(parents=True)
        for i in range(2 + (k == 0)):
            Image.fromarray(pixels(1, 8 + i, k * 3 + i)[0]).save(folder / f"{name[4:]}_{i}.jpg")
    (stage / "CUB_200_2011" / "classes.txt").write_text(
        "".join(f"{k + 1} {n}\n" for k, n in enumerate(names)))
    with tarfile.open(root / "CUB_200_2011.tgz", "w:gz") as t:
        t.add(stage / "CUB_200_2011", arcname="CUB_200_2011")
    return root / "CUB_200_2011.tgz"

"""The Omniglot loader: official layout, structure checks, cache, rotations, download path."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import zipfile

import pytest
import torch
from helpers import write_omniglot_zip

from metabench.data import omniglot
from metabench.data.omniglot import load_omniglot
from metabench.errors import DataError


def test_small_archive_loads_with_rotations(small_omniglot, tmp_path):
    data = load_omniglot(str(small_omniglot), split="background", cache_dir=str(tmp_path / "c"))
    # background alphabets Alpha(3) Beta(2) Gamma(2): last sixth (at least 1) = Gamma is val
    assert data.classes("train") == 5 * 4 and data.classes("val") == 2 * 4
    assert data.classes("test") == 3 * 4
    assert data.splits["train"].shape == (20, 20, 1, 28, 28)
    assert data.splits["train"].dtype == torch.uint8
    x = data.splits["train"]
    # classes 0..3 are one character at 0/90/180/270 degrees
    assert torch.equal(x[1], torch.rot90(x[0], 1, dims=(-2, -1)))
    assert torch.equal(x[2], torch.rot90(x[0], 2, dims=(-2, -1)))
    assert not torch.equal(x[0], x[4])


def test_extracted_folder_equals_zip(small_omniglot, tmp_path):
    folder = tmp_path / "extracted"
    for name in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(small_omniglot / f"{name}.zip") as z:
            z.extractall(folder)
    a = load_omniglot(str(small_omniglot), split="background", cache_dir=str(tmp_path / "c1"))
    b = load_omniglot(str(folder), split="background", cache_dir=str(tmp_path / "c2"))
    for s in ("train", "val", "test"):
        assert torch.equal(a.splits[s], b.splits[s])


def test_cache_is_reused_and_rebuilt_when_corrupt(small_omniglot, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_omniglot(str(small_omniglot), split="background", cache_dir=str(cache))
    files = list(cache.glob("omniglot-*.pt"))
    assert len(files) == 1

    def no_decode(*a, **k):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(omniglot, "_decode", no_decode)
    again = load_omniglot(str(small_omniglot), split="background", cache_dir=str(cache))
    assert torch.equal(first.splits["test"], again.splits["test"])

    monkeypatch.undo()
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncate the cache file
    rebuilt = load_omniglot(str(small_omniglot), split="background", cache_dir=str(cache))
    assert torch.equal(first.splits["test"], rebuilt.splits["test"])
    assert files[0].stat().st_size > 1000


def test_structure_errors_name_the_problem(tmp_path):
    root = tmp_path / "bad"
    root.mkdir()
    write_omniglot_zip(root / "images_background.zip", "images_background", {"A": 2, "B": 1},
                       images=19)
    write_omniglot_zip(root / "images_evaluation.zip", "images_evaluation", {"C": 1})
    with pytest.raises(DataError, match="needs 20 images, but A/character01 has 19 images"):
        load_omniglot(str(root), split="background", cache_dir=str(tmp_path / "c"))


def test_not_a_zip(tmp_path):
    (tmp_path / "images_background.zip").write_bytes(b"not a zip")
    write_omniglot_zip(tmp_path / "images_evaluation.zip", "images_evaluation", {"C": 1})
    with pytest.raises(DataError, match="not a readable zip"):
        load_omniglot(str(tmp_path), split="background", cache_dir=str(tmp_path / "c"))


def test_missing_offline_names_files_and_place(tmp_path):
    with pytest.raises(DataError) as e:
        load_omniglot(str(tmp_path / "nowhere"), cache_dir=str(tmp_path / "c"))
    msg = str(e.value)
    assert "images_background.zip and images_evaluation.zip" in msg
    assert str(tmp_path / "nowhere") in msg and "data.download=true" in msg
    assert "\n" not in msg


def test_vinyals_split_needs_complete_data(small_omniglot, tmp_path):
    with pytest.raises(DataError, match="data.split=background for partial archives"):
        load_omniglot(str(small_omniglot), split="vinyals", cache_dir=str(tmp_path / "c"))


@pytest.fixture
def file_server(small_omniglot):
    """A local HTTP server on 127.0.0.1 serving the small archives (no network needed)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(small_omniglot))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", small_omniglot
    server.shutdown()


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_download_fetches_and_checks_md5(file_server, tmp_path):
    url, served = file_server
    sums = {f"{a}.zip": md5(served / f"{a}.zip") for a in omniglot.ARCHIVES}
    root = tmp_path / "fresh"
    data = load_omniglot(str(root), split="background", download=True, url=url, md5=sums,
                         cache_dir=str(tmp_path / "c"))
    assert (root / "images_background.zip").read_bytes() == \
        (served / "images_background.zip").read_bytes()
    assert data.classes("test") == 12


def test_download_rejects_wrong_md5_and_keeps_nothing(file_server, tmp_path):
    url, _ = file_server
    root = tmp_path / "fresh"
    with pytest.raises(DataError, match="has md5 .* expected 0000"):
        load_omniglot(str(root), split="background", download=True, url=url,
                      md5={f"{a}.zip": "0000" for a in omniglot.ARCHIVES},
                      cache_dir=str(tmp_path / "c"))
    assert not any(root.glob("*.zip"))


def test_download_unreachable_is_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="could not download http://127.0.0.1:9/"):
        load_omniglot(str(tmp_path / "x"), download=True, url="http://127.0.0.1:9",
                      cache_dir=str(tmp_path / "c"))


def test_real_omniglot_vinyals_split(real_omniglot):
    data = load_omniglot(str(real_omniglot), split="vinyals")
    assert data.classes("train") == 1028 * 4
    assert data.classes("val") == 172 * 4
    assert data.classes("test") == 423 * 4
    x = data.splits["test"][:8].float() / 255
    # strokes are bright on a dark background: most pixels dark, some ink on every image
    assert (x.mean(dim=(-1, -2, -3)) < 0.5).all() and (x.amax(dim=(-1, -2, -3)) > 0.5).all()
    bg = load_omniglot(str(real_omniglot), split="background")
    assert bg.classes("test") == 659 * 4
    assert bg.classes("train") + bg.classes("val") == 964 * 4

"""The Omniglot loader: official layout, structure checks, cache, rotations, download path."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile

import pytest
import torch
from helpers import write_omniglot_zip

from metabench.data import omniglot
from metabench.data.download import content_length, fetch
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


def served_sums(served):
    return {a: md5(served / f"{a}.zip") for a in omniglot.ARCHIVES}


def test_first_run_downloads_announced_with_progress_checked_and_atomic(file_server, tmp_path,
                                                                        capsys):
    url, served = file_server
    root = tmp_path / "fresh"
    data = load_omniglot(str(root), split="background", download=True, url=url,
                         md5=served_sums(served), cache_dir=str(tmp_path / "c"))
    # exactly the served bytes, and nothing else: no temporary file or folder left behind
    assert sorted(p.name for p in root.iterdir()) == ["images_background.zip",
                                                      "images_evaluation.zip"]
    for a in omniglot.ARCHIVES:
        assert (root / f"{a}.zip").read_bytes() == (served / f"{a}.zip").read_bytes()
    assert data.classes("test") == 12
    err = capsys.readouterr().err
    size = sum((served / f"{a}.zip").stat().st_size for a in omniglot.ARCHIVES)
    announce = [ln for ln in err.splitlines() if ln.startswith("downloading")]
    assert announce == [f"downloading Omniglot (2 zips, {size / 1e6:.1f} MB) from {url} "
                        f"into {root}"]
    assert err.count("100%") == 2  # torchvision's progress bar, one per zip
    assert err.index("downloading") < err.index("100%")  # announced before fetching


def test_only_the_missing_zip_is_fetched(file_server, tmp_path, capsys):
    url, served = file_server
    root = tmp_path / "half"
    root.mkdir()
    mine = write_omniglot_zip(root / "images_background.zip", "images_background",
                              {"Alpha": 3, "Beta": 2, "Gamma": 2}, seed=3)
    before = mine.read_bytes()
    load_omniglot(str(root), split="background", download=True, url=url,
                  md5=served_sums(served), cache_dir=str(tmp_path / "c"))
    assert mine.read_bytes() == before  # a file already there is used as it is
    assert (root / "images_evaluation.zip").read_bytes() == \
        (served / "images_evaluation.zip").read_bytes()
    size = (served / "images_evaluation.zip").stat().st_size
    assert f"downloading Omniglot (1 zip, {size / 1e6:.1f} MB) from {url}/images_evaluation.zip " \
        f"into {root}" in capsys.readouterr().err


def test_download_rejects_wrong_md5_and_keeps_nothing(file_server, tmp_path):
    url, served = file_server
    root = tmp_path / "fresh"
    with pytest.raises(DataError) as e:
        load_omniglot(str(root), split="background", download=True, url=url,
                      md5={a: "0000" for a in omniglot.ARCHIVES},
                      cache_dir=str(tmp_path / "c"))
    got = md5(served / "images_background.zip")
    assert str(e.value) == (f"downloaded {url}/images_background.zip has md5 {got}, "
                            "expected 0000; file discarded")
    assert list(root.iterdir()) == []  # not the zip, not a temporary file


def test_download_unreachable_is_one_clear_error(tmp_path, capsys):
    root = tmp_path / "x"
    with pytest.raises(DataError) as e:
        load_omniglot(str(root), download=True, url="http://127.0.0.1:9",
                      cache_dir=str(tmp_path / "c"))
    msg = str(e.value)
    assert msg.startswith("could not download http://127.0.0.1:9/images_background.zip: "
                          "Connection refused; ")
    assert "place images_background.zip and images_evaluation.zip" in msg
    assert str(root) in msg and "data.download=false" in msg and "\n" not in msg
    assert "downloading" not in capsys.readouterr().err  # nothing announced that cannot start


def test_black_holed_host_times_out_and_restores_the_socket_default(tmp_path):
    """A server that accepts the connection and never answers: the run stops, it does not
    hang (torchvision's download_url sets no timeout of its own)."""
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(8)  # the kernel completes the handshakes; nobody ever reads or answers
    url = f"http://127.0.0.1:{hole.getsockname()[1]}/images_background.zip"
    try:
        for call in (lambda: fetch(url, tmp_path / "a.zip", None, timeout=0.5),
                     lambda: content_length(url, timeout=0.5)):
            started = time.perf_counter()
            with pytest.raises(DataError, match=f"could not download {url}: .*timed out"):
                call()
            assert time.perf_counter() - started < 10
    finally:
        hole.close()
    assert socket.getdefaulttimeout() is None
    assert list(tmp_path.iterdir()) == []


def test_download_is_on_by_default_and_the_suite_turns_it_off(cfg_factory, monkeypatch):
    assert cfg_factory().data.source.download is False  # conftest: METABENCH_DOWNLOAD=false
    monkeypatch.delenv("METABENCH_DOWNLOAD")
    cfg = cfg_factory()
    assert cfg.data.source.download is True
    assert dict(cfg.data.source.md5) == omniglot.OFFICIAL_MD5
    assert cfg_factory("data.download=false").data.source.download is False


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"download": "yes"}, "data.download=yes must be true or false"),
    ({"download": True, "md5": {"images_backgrund": "0"}},
     "data.md5.images_backgrund names no Omniglot archive"),
])
def test_bad_download_settings_are_one_line(kwargs, expected, tmp_path):
    with pytest.raises(DataError, match=expected):
        load_omniglot(str(tmp_path / "none"), url="http://127.0.0.1:9",
                      cache_dir=str(tmp_path / "c"), **kwargs)


def test_cli_first_run_downloads_then_trains(file_server, tmp_path):
    url, served = file_server
    root = tmp_path / "empty"
    root.mkdir()
    sums = [f"data.md5.{a}={s}" for a, s in served_sums(served).items()]
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run(
        [sys.executable, "-m", "metabench", "train", f"data.root={root}", "data.download=true",
         f"data.url={url}", *sums, "data.split=background", "train.iterations=2",
         "train.eval_every=2", "train.val_episodes=4", "eval.episodes=4", "eval.batch=4",
         "logger=none", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "downloading Omniglot (2 zips, " in r.stderr and f"from {url} into {root}" in r.stderr
    for a in omniglot.ARCHIVES:
        assert (root / f"{a}.zip").read_bytes() == (served / f"{a}.zip").read_bytes()
    assert "result: protonet-omniglot-5w1s-seed0: test accuracy" in r.stdout
    assert (tmp_path / "run" / "checkpoints" / "best.pt").is_file()


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

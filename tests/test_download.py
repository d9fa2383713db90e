"""data/cached_challenge_fineweb.py against a local fake hub (tests/fake_hub.py); no network."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "data"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import build_shards  # noqa: E402
import cached_challenge_fineweb as downloader  # noqa: E402
from fake_hub import FakeHub, etag_of  # noqa: E402

REPO = "test-owner/parameter-golf"
DATASET_DIR = "datasets/fineweb10B_sp1024"
SHARD_SIZE = 1000
SHARD_TOKENS = {"val": [1000, 300], "train": [1000, 450]}
TOKENIZER_FILES = ("tokenizers/fineweb_1024_bpe.model", "tokenizers/fineweb_1024_bpe.vocab")


@pytest.fixture(autouse=True)
def isolated_hub_settings(monkeypatch, tmp_path):
    # The endpoint is passed explicitly and the downloader fetches over plain HTTP (never xet or
    # hf_transfer), so these only guard against settings of the machine running the tests; a dummy
    # HF_TOKEN keeps any stored token out of the requests.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_HUB_ENABLE_HF_TRANSFER", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_dummy_token_for_tests")  # takes precedence over any stored token
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def shard_bytes(tmp_path: Path, tokens: np.ndarray) -> bytes:
    path = tmp_path / "shard.bin"
    build_shards.write_shard(path, tokens)
    return path.read_bytes()


def make_manifest(**stats_overrides) -> dict:
    stats = {
        "files_val": len(SHARD_TOKENS["val"]),
        "files_train": len(SHARD_TOKENS["train"]),
        "tokens_val": sum(SHARD_TOKENS["val"]),
        "tokens_train": sum(SHARD_TOKENS["train"]),
        **stats_overrides,
    }
    return {
        "version": "10B",
        "shard_size": SHARD_SIZE,
        "datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "sp_bpe_1024", "stats": stats}],
        "tokenizers": [
            {
                "name": "sp_bpe_1024",
                "model_path": "tokenizers/fineweb_1024_bpe.model",
                "vocab_path": "tokenizers/fineweb_1024_bpe.vocab",
            }
        ],
    }


@pytest.fixture
def published(tmp_path) -> dict[str, bytes]:
    """Every file of the fake published export, by path under the repo's `datasets/` root."""
    rng = np.random.default_rng(0)
    files = {"manifest.json": json.dumps(make_manifest()).encode()}
    for split, counts in SHARD_TOKENS.items():
        for index, count in enumerate(counts):
            tokens = rng.integers(0, 1024, size=count).astype(np.uint16)
            files[f"{DATASET_DIR}/fineweb_{split}_{index:06d}.bin"] = shard_bytes(tmp_path, tokens)
    for path in TOKENIZER_FILES:
        files[path] = f"contents of {path}".encode() * 10
    return files


@pytest.fixture
def hub(published):
    with FakeHub() as fake:
        for path, content in published.items():
            fake.add(REPO, f"datasets/{path}", content, lfs=path.endswith((".bin", ".model")))
        yield fake


def run(hub: FakeHub, local_dir: Path, *extra: str) -> int:
    return downloader.main(
        ["--variant", "sp1024", "--repo-id", REPO, "--endpoint", hub.endpoint, "--local-dir", str(local_dir), *extra]
    )


def test_fresh_download_fetches_manifest_tokenizer_all_val_and_requested_train(hub, published, tmp_path):
    local = tmp_path / "data"
    assert run(hub, local, "--train-shards", "1") == 0

    expected = {"manifest.json", *TOKENIZER_FILES, f"{DATASET_DIR}/fineweb_train_000000.bin"}
    expected |= {f"{DATASET_DIR}/fineweb_val_{i:06d}.bin" for i in range(2)}
    on_disk = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()}
    assert on_disk == expected | {downloader.VERIFIED}
    for path in expected:
        assert (local / path).read_bytes() == published[path]
    record = json.loads((local / downloader.VERIFIED).read_text())
    assert record == {path: [len(published[path]), (local / path).stat().st_mtime_ns,
                             etag_of(published[path], lfs=path.endswith((".bin", ".model")))] for path in expected}


def test_token_goes_to_the_hub_but_not_to_the_cdn(hub, tmp_path):
    assert run(hub, tmp_path / "data", "--train-shards", "1") == 0
    cdn = [r for r in hub.requests if r.on_cdn]
    assert cdn and not any(r.authorized for r in cdn)
    assert all(r.authorized for r in hub.requests if not r.on_cdn)


def test_second_run_skips_complete_files(hub, tmp_path):
    local = tmp_path / "data"
    assert run(hub, local, "--train-shards", "2") == 0
    hub.requests.clear()
    assert run(hub, local, "--train-shards", "2") == 0
    assert hub.gets() == []  # only HEAD requests: everything was present and verified


def test_resumes_a_partial_file_with_a_range_request(hub, published, tmp_path):
    local = tmp_path / "data"
    path = f"{DATASET_DIR}/fineweb_val_000001.bin"
    content = published[path]
    dest = local / path
    dest.parent.mkdir(parents=True)
    downloader.partial_path(dest, etag_of(content, lfs=True)).write_bytes(content[:700])

    assert run(hub, local, "--train-shards", "0") == 0

    assert [r.range for r in hub.gets(path)] == ["bytes=700-"]
    assert dest.read_bytes() == content
    assert not list(dest.parent.glob("*.partial"))


def test_partial_file_of_another_remote_version_is_not_resumed(hub, published, tmp_path):
    local = tmp_path / "data"
    path = f"{DATASET_DIR}/fineweb_val_000001.bin"
    dest = local / path
    dest.parent.mkdir(parents=True)
    downloader.partial_path(dest, "f" * 64).write_bytes(b"start of some older upload")

    assert run(hub, local, "--train-shards", "0") == 0

    assert [r.range for r in hub.gets(path)] == [None]
    assert dest.read_bytes() == published[path]
    assert not list(dest.parent.glob("*.partial"))


def test_dropped_connection_is_resumed_with_a_range_request(hub, published, tmp_path, monkeypatch):
    # huggingface_hub writes what it receives in 10 MB chunks; small chunks make the 500 bytes
    # before the cut reach the file, as the first chunks of a real 200 MB shard would.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 100)
    path = f"{DATASET_DIR}/fineweb_train_000000.bin"
    hub.cut_next_get[f"datasets/{path}"] = 500

    assert run(hub, tmp_path / "data", "--train-shards", "1") == 0

    assert [r.range for r in hub.gets(path)] == [None, "bytes=500-"]
    assert (tmp_path / "data" / path).read_bytes() == published[path]


def test_corrupt_local_copy_is_downloaded_again(hub, published, tmp_path):
    local = tmp_path / "data"
    path = f"{DATASET_DIR}/fineweb_val_000000.bin"
    (local / path).parent.mkdir(parents=True)
    (local / path).write_bytes(b"\0" * len(published[path]))  # right size, wrong header

    assert run(hub, local, "--train-shards", "0") == 0
    assert (local / path).read_bytes() == published[path]


def damaged(shard: bytes) -> bytes:
    """The same size and a valid header; one token id differs."""
    return shard[:1100] + bytes([shard[1100] ^ 0xFF]) + shard[1101:]


def test_local_shard_with_a_right_header_and_a_wrong_byte_is_downloaded_again(hub, published, tmp_path, capsys):
    local = tmp_path / "data"
    path = f"{DATASET_DIR}/fineweb_val_000000.bin"
    (local / path).parent.mkdir(parents=True)
    (local / path).write_bytes(damaged(published[path]))
    assert downloader.check_shard(local / path, SHARD_TOKENS["val"][0]) == SHARD_TOKENS["val"][0]  # looks complete

    assert run(hub, local, "--train-shards", "0") == 0

    assert (local / path).read_bytes() == published[path]
    assert [r.range for r in hub.gets(path)] == [None]
    err = capsys.readouterr().err
    assert f"{local / path}: local copy rejected (content does not match the hub's hash" in err


def test_verified_files_are_hashed_again_only_when_changed(hub, published, tmp_path, monkeypatch):
    local = tmp_path / "data"
    assert run(hub, local, "--train-shards", "1") == 0
    hashed = []
    check_etag = downloader.check_etag
    monkeypatch.setattr(downloader, "check_etag", lambda path, etag: hashed.append(path.name) or check_etag(path, etag))
    hub.requests.clear()

    assert run(hub, local, "--train-shards", "1") == 0
    assert hashed == [] and hub.gets() == []

    path = local / DATASET_DIR / "fineweb_val_000001.bin"
    mtime = path.stat().st_mtime_ns
    path.write_bytes(damaged(path.read_bytes()))
    os.utime(path, ns=(mtime + 10**9, mtime + 10**9))  # changed a second later, as a later edit would be
    assert run(hub, local, "--train-shards", "1") == 0
    # the local copy is hashed and rejected, the download hashed before it takes the name
    content = published[f"{DATASET_DIR}/{path.name}"]
    assert hashed == [path.name, downloader.partial_path(path, etag_of(content, lfs=True)).name]
    assert path.read_bytes() == content


@pytest.mark.parametrize("etag", [None, "W/1234", "A" * 64])
def test_a_file_without_a_content_hash_is_an_error(tmp_path, etag):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(downloader.DownloadError, match=re.escape(f"the hub sent no content hash (ETag {etag!r})")):
        downloader.check_etag(tmp_path / "f", etag)


def test_a_file_without_a_content_hash_is_refused_before_downloading(tmp_path, monkeypatch):
    def no_download(*args):
        raise AssertionError("downloaded a file that could not be verified")
    monkeypatch.setattr(downloader, "append_download", no_download)
    remote = downloader.RemoteFile("datasets/x.bin", "http://hub/x.bin", True, 10, None, "c" * 40)
    with pytest.raises(downloader.DownloadError, match=re.escape("datasets/x.bin: the hub sent no content hash (ETag None)")):
        downloader.fetch(remote, tmp_path / "x.bin", downloader.VerifiedFiles(tmp_path))
    assert list(tmp_path.iterdir()) == []


def corrupt(shard: bytes, how: str) -> bytes:
    header = np.frombuffer(shard[:1024], dtype="<i4").copy()
    if how == "magic":
        header[0] = 12345
    elif how == "version":
        header[1] = 2
    elif how == "truncated":
        return shard[:-10]
    return header.tobytes() + shard[1024:]


@pytest.mark.parametrize(
    "how, message",
    [("magic", "magic 12345"), ("version", "version 2"), ("truncated", "header says 1000 tokens")],
)
def test_corrupt_shard_is_rejected(hub, published, tmp_path, capsys, how, message):
    path = f"{DATASET_DIR}/fineweb_val_000000.bin"
    hub.add(REPO, f"datasets/{path}", corrupt(published[path], how), lfs=True)
    local = tmp_path / "data"

    assert run(hub, local, "--train-shards", "0") == 1

    err = capsys.readouterr().err
    assert "variant sp1024" in err and "fineweb_val_000000.bin" in err
    assert "corrupt shard" in err and message in err
    assert not (local / path).exists()
    assert not list((local / DATASET_DIR).glob("*.partial"))


def test_missing_manifest(hub, tmp_path, capsys):
    hub.remove(REPO, "datasets/manifest.json")
    assert run(hub, tmp_path / "data") == 1
    err = capsys.readouterr().err
    assert "datasets/manifest.json" in err and REPO in err


def test_stale_manifest_listing_a_missing_file(hub, tmp_path, capsys):
    hub.remove(REPO, f"datasets/{DATASET_DIR}/fineweb_train_000001.bin")
    assert run(hub, tmp_path / "data", "--train-shards", "2") == 1
    err = capsys.readouterr().err
    assert "stale manifest" in err and "fineweb_train_000001.bin" in err


def test_stale_manifest_token_count(hub, tmp_path, capsys):
    manifest = make_manifest(tokens_val=sum(SHARD_TOKENS["val"]) + 5)
    hub.add(REPO, "datasets/manifest.json", json.dumps(manifest).encode())
    assert run(hub, tmp_path / "data", "--train-shards", "0") == 1
    err = capsys.readouterr().err
    assert "stale manifest" in err and "fineweb_val_000001.bin" in err and "305" in err


def test_missing_variant(hub, tmp_path, capsys):
    code = downloader.main(
        ["--variant", "sp8192", "--repo-id", REPO, "--endpoint", hub.endpoint, "--local-dir", str(tmp_path / "d")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "sp8192" in err and "fineweb10B_sp1024" in err


def test_more_train_shards_than_published(hub, tmp_path, capsys):
    assert run(hub, tmp_path / "data", "--train-shards", "3") == 1
    assert "has 2 train shards, 3 were asked for" in capsys.readouterr().err


def test_missing_repo(hub, tmp_path, capsys):
    code = downloader.main(
        ["--variant", "sp1024", "--repo-id", "nobody/nothing", "--endpoint", hub.endpoint, "--local-dir", str(tmp_path)]
    )
    assert code == 1
    assert "nobody/nothing" in capsys.readouterr().err

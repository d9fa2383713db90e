"""Download the challenge's published FineWeb shards and tokenizer from the Hugging Face hub.

    python data/cached_challenge_fineweb.py --variant sp8192 --train-shards 10

Remote layout (a dataset repo): everything under the root prefix `datasets/`, described by
`datasets/manifest.json`; shards in `datasets/datasets/fineweb10B_<variant>/`, tokenizer files
in `datasets/tokenizers/`. Locally the root prefix is dropped: `<local-dir>/manifest.json`,
`<local-dir>/datasets/fineweb10B_<variant>/`, `<local-dir>/tokenizers/`.

All validation shards and the first --train-shards train shards are fetched. Files already
present are skipped when they match the hub's hash (ETag: sha256 for LFS files) and, for shards,
the checks below; a local file that does not match is downloaded again, with a line saying so.
`<local-dir>/datasets/.verified.json` records the size, mtime and hash of every file verified, so an
unchanged file is not hashed again on the next run. Interrupted downloads resume from where they
stopped (HTTP Range). Every shard is checked (magic, version, size = 1024 + 2 * num_tokens, and
the token count the manifest implies) and every downloaded file against the hub's hash before it
takes its final name (a file the hub gives no content hash for is an error). Exit status 1 with a
message on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError
from huggingface_hub.file_download import http_get
from huggingface_hub.utils import build_hf_headers

VARIANT_REPOS = {"sp1024": "willdepueoai/parameter-golf", "sp8192": "kevclark/parameter-golf"}
REMOTE_ROOT = "datasets"
MANIFEST = "manifest.json"
VERIFIED = "datasets/.verified.json"  # beside the shards, which are most of it (and ignored by git with them)
SHARD_PREFIX = "fineweb"
DEFAULT_TRAIN_SHARDS = 80  # 8B tokens, the challenge's usual download
DEFAULT_LOCAL_DIR = Path(__file__).resolve().parent  # this repo's data/
SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_BYTES = 256 * 4


class DownloadError(RuntimeError):
    """A failure reported to the user as one clear line."""


class MissingRemoteFile(DownloadError):
    pass


# ---------------------------------------------------------------- the hub


@dataclass
class RemoteFile:
    path: str  # inside the repo
    url: str  # where to GET it: a CDN address when the hub redirects there
    on_hub: bool  # False for a CDN address, which must not receive the hub token
    size: int | None
    etag: str | None
    commit: str | None


@dataclass
class Hub:
    repo_id: str
    revision: str
    endpoint: str | None = None

    def describe(self, path: str) -> RemoteFile:
        """Metadata of one file (a HEAD request); MissingRemoteFile if the repo has no such file."""
        url = hf_hub_url(self.repo_id, path, repo_type="dataset", revision=self.revision, endpoint=self.endpoint)
        try:
            meta = get_hf_file_metadata(url, endpoint=self.endpoint, retry_on_errors=True)
        except RepositoryNotFoundError:
            raise DownloadError(f"dataset repo {self.repo_id} not found (or private/gated)") from None
        except RevisionNotFoundError:
            raise DownloadError(f"dataset repo {self.repo_id} has no revision {self.revision!r}") from None
        except HfHubHTTPError as e:
            if e.response is not None and e.response.status_code == 404:
                raise MissingRemoteFile(f"{self.repo_id}@{self.revision} has no file {path}") from None
            raise DownloadError(f"{self.repo_id}: cannot read {path}: {e}") from None
        on_hub = urlsplit(meta.location).netloc == urlsplit(url).netloc
        return RemoteFile(path, meta.location, on_hub, meta.size, meta.etag, meta.commit_hash)


def append_download(remote: RemoteFile, partial: Path) -> None:
    """Appends the missing tail of `remote` to `partial` (a Range request when it is not empty).

    huggingface_hub's hf_hub_download cannot resume across runs: it downloads to a uniquely
    named temporary file and deletes that on failure. Its http_get, used here, resumes from any
    offset and also retries transient errors within the run.
    """
    headers = build_hf_headers()
    if not remote.on_hub:
        headers.pop("authorization", None)
    resume_from = partial.stat().st_size if partial.exists() else 0
    try:
        with open(partial, "ab") as f:
            http_get(
                remote.url, f, resume_size=resume_from, headers=headers,
                expected_size=remote.size, displayed_filename=Path(remote.path).name,
            )
    except Exception as e:  # errors of several network layers; the partial file stays, to resume
        raise DownloadError(f"download of {remote.path} failed ({e}); run again to resume") from None


# ---------------------------------------------------------------- verification


def check_shard(path: Path, expected_tokens: int | None = None) -> int:
    """Returns the shard's token count; DownloadError if it is not a complete challenge shard."""
    size = path.stat().st_size
    if size < SHARD_HEADER_BYTES:
        raise DownloadError(f"corrupt shard: {size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte header")
    with open(path, "rb") as f:
        magic, version, num_tokens = struct.unpack("<3i", f.read(12))
    if magic != SHARD_MAGIC:
        raise DownloadError(f"corrupt shard: magic {magic}, expected {SHARD_MAGIC}")
    if version != SHARD_VERSION:
        raise DownloadError(f"corrupt shard: version {version}, expected {SHARD_VERSION}")
    if size != SHARD_HEADER_BYTES + 2 * num_tokens:
        raise DownloadError(
            f"corrupt shard: header says {num_tokens} tokens "
            f"({SHARD_HEADER_BYTES + 2 * num_tokens} bytes) but the file has {size} bytes"
        )
    if expected_tokens is not None and num_tokens != expected_tokens:
        raise DownloadError(f"stale manifest: shard has {num_tokens} tokens, the manifest implies {expected_tokens}")
    return num_tokens


def require_content_hash(etag: str | None) -> None:
    """The hub's ETag is a content hash: LFS files carry their sha256 (64 hex digits), plain git files their git
    blob sha1 (40). Anything else cannot verify a file."""
    if etag is None or not re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", etag):
        raise DownloadError(f"the hub sent no content hash (ETag {etag!r}): the file cannot be verified")


def check_etag(path: Path, etag: str | None) -> None:
    """Compares the file with the hub's ETag."""
    require_content_hash(etag)
    digest = hashlib.sha256() if len(etag) == 64 else hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != etag:
        raise DownloadError(f"content does not match the hub's hash {etag}")


class VerifiedFiles:
    """`<local-dir>/datasets/.verified.json`: path -> [size, mtime_ns, etag] of local files that matched that hash."""

    def __init__(self, local_dir: Path):
        self.root, self.path = local_dir, local_dir / VERIFIED
        try:
            self.entries = json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DownloadError(f"cannot read {self.path} ({e}); delete it (files are then hashed again)") from None
        if not isinstance(self.entries, dict):
            raise DownloadError(f"{self.path} is not a JSON object; delete it (files are then hashed again)")

    def _entry(self, path: Path, etag: str | None) -> tuple[str, list]:
        stat = path.stat()
        return path.relative_to(self.root).as_posix(), [stat.st_size, stat.st_mtime_ns, etag]

    def check(self, path: Path, etag: str | None) -> None:
        """check_etag, skipped for a file recorded with the same size, mtime and hash."""
        key, entry = self._entry(path, etag)
        if self.entries.get(key) != entry:
            check_etag(path, etag)

    def record(self, path: Path, etag: str | None) -> None:
        key, entry = self._entry(path, etag)
        if self.entries.get(key) == entry:
            return
        self.entries[key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.entries, indent=0, sort_keys=True) + "\n")
        os.replace(tmp, self.path)


# ---------------------------------------------------------------- fetching one file

Check = Callable[[Path, RemoteFile], object]  # raises DownloadError when the local file's structure is not right


def partial_path(dest: Path, etag: str | None) -> Path:
    # Named after the remote version, so a partial file is only ever resumed against that version.
    version = "".join(c for c in etag or "unknown" if c.isalnum())[:16]
    return dest.with_name(f"{dest.name}.{version}.partial")


def fetch(remote: RemoteFile, dest: Path, verified: VerifiedFiles, check: Check | None = None) -> str:
    """Makes `dest` a copy of `remote` verified against its hash and `check`; returns what it did."""
    try:
        require_content_hash(remote.etag)  # before any byte is downloaded
    except DownloadError as e:
        raise DownloadError(f"{remote.path}: {e}") from None
    if dest.is_file() and dest.stat().st_size == remote.size:
        try:
            verified.check(dest, remote.etag)
            if check:
                check(dest, remote)
            verified.record(dest, remote.etag)
            return "present"
        except DownloadError as e:
            print(f"{dest}: local copy rejected ({e}); downloading it again", file=sys.stderr)
    partial = partial_path(dest, remote.etag)
    for stale in dest.parent.glob(f"{dest.name}.*.partial"):
        if stale != partial:
            stale.unlink()
    if partial.exists() and remote.size is not None and partial.stat().st_size > remote.size:
        partial.unlink()  # longer than the file itself: not a prefix of it
    dest.parent.mkdir(parents=True, exist_ok=True)
    resumed = partial.exists() and partial.stat().st_size > 0
    append_download(remote, partial)
    try:
        check_etag(partial, remote.etag)
        if check:
            check(partial, remote)
    except DownloadError as e:
        partial.unlink()  # complete but wrong: resuming it could never help
        raise DownloadError(f"{remote.path}: {e}") from None
    os.replace(partial, dest)
    verified.record(dest, remote.etag)
    return "resumed" if resumed else "downloaded"


# ---------------------------------------------------------------- the manifest


def load_manifest(hub: Hub, local_dir: Path, verified: VerifiedFiles) -> dict:
    remote_path = f"{REMOTE_ROOT}/{MANIFEST}"
    try:
        remote = hub.describe(remote_path)
    except MissingRemoteFile:
        raise DownloadError(f"{hub.repo_id}@{hub.revision} has no {remote_path}: not a challenge data repo?") from None
    # Pin every later request to the manifest's commit, so all files come from one version.
    hub.revision = remote.commit or hub.revision
    dest = local_dir / MANIFEST
    fetch(remote, dest, verified)
    try:
        manifest = json.loads(dest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DownloadError(f"{remote_path} of {hub.repo_id} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise DownloadError(f"{remote_path} of {hub.repo_id} is not a JSON object")
    return manifest


def find_dataset(manifest: dict, variant: str, repo_id: str) -> dict:
    name = f"fineweb10B_{variant}"
    datasets = manifest.get("datasets") or []
    for entry in datasets:
        if entry.get("name") == name:
            return entry
    listed = ", ".join(str(entry.get("name")) for entry in datasets) or "none"
    raise DownloadError(f"variant {variant} ({name}) is not in the manifest of {repo_id}; it lists: {listed}")


def tokenizer_files(manifest: dict, dataset: dict) -> list[str]:
    name = dataset.get("tokenizer_name")
    for entry in manifest.get("tokenizers") or []:
        if entry.get("name") == name:
            files = [entry[key] for key in ("model_path", "vocab_path", "path") if entry.get(key)]
            if files:
                return files
    raise DownloadError(f"stale manifest: no downloadable tokenizer {name!r} for {dataset.get('name')}")


def shards_to_fetch(manifest: dict, dataset: dict, train_shards: int) -> list[tuple[str, int | None]]:
    """(path under the root, expected token count or None) of every shard to download."""
    stats = dataset.get("stats") or {}
    counts = {split: stats.get(f"files_{split}") for split in ("val", "train")}
    if not all(isinstance(n, int) for n in counts.values()):
        raise DownloadError(f"manifest entry {dataset.get('name')} lacks stats.files_val / stats.files_train")
    if train_shards > counts["train"]:
        raise DownloadError(f"{dataset['name']} has {counts['train']} train shards, {train_shards} were asked for")
    shards = []
    for split, wanted in (("val", counts["val"]), ("train", train_shards)):
        for index in range(wanted):
            path = f"datasets/{dataset['name']}/{SHARD_PREFIX}_{split}_{index:06d}.bin"
            shards.append((path, expected_shard_tokens(manifest, stats, split, index, counts[split])))
    return shards


def expected_shard_tokens(manifest: dict, stats: dict, split: str, index: int, num_shards: int) -> int | None:
    # The exporter cuts each split's token stream into shards of exactly shard_size tokens,
    # so every shard but the last is full and the last holds the remainder.
    shard_size, total = manifest.get("shard_size"), stats.get(f"tokens_{split}")
    if not isinstance(shard_size, int) or not isinstance(total, int):
        return None
    return shard_size if index < num_shards - 1 else total - shard_size * (num_shards - 1)


# ---------------------------------------------------------------- the whole download


def download_variant(
    variant: str,
    train_shards: int = DEFAULT_TRAIN_SHARDS,
    local_dir: str | Path = DEFAULT_LOCAL_DIR,
    repo_id: str | None = None,
    revision: str = "main",
    endpoint: str | None = None,
) -> list[Path]:
    """Fetches the manifest, the tokenizer, all val shards and the first `train_shards` train shards."""
    if train_shards < 0:
        raise DownloadError(f"--train-shards must be >= 0, got {train_shards}")
    local_dir = Path(local_dir)
    hub = Hub(repo_id or VARIANT_REPOS[variant], revision, endpoint)
    verified = VerifiedFiles(local_dir)
    manifest = load_manifest(hub, local_dir, verified)
    dataset = find_dataset(manifest, variant, hub.repo_id)
    wanted: list[tuple[str, Check | None]] = [(path, None) for path in tokenizer_files(manifest, dataset)]
    for path, expected in shards_to_fetch(manifest, dataset, train_shards):
        wanted.append((path, lambda local, remote, expected=expected: check_shard(local, expected)))

    fetched = []
    for path, check in wanted:
        try:
            remote = hub.describe(f"{REMOTE_ROOT}/{path}")
        except MissingRemoteFile as e:
            raise DownloadError(f"stale manifest: it lists {path} but {e}") from None
        dest = local_path(local_dir, path)
        outcome = fetch(remote, dest, verified, check)
        print(f"{outcome:>10}  {dest}")
        fetched.append(dest)
    return fetched


def local_path(local_dir: Path, path: str) -> Path:
    # Checked lexically, not with resolve(): data/datasets is often a symlink to a larger disk.
    parts = PurePosixPath(path).parts
    if not parts or parts[0] == "/" or ".." in parts:
        raise DownloadError(f"manifest path {path!r} points outside {local_dir}")
    return local_dir.joinpath(*parts)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(VARIANT_REPOS), default="sp8192")
    parser.add_argument(
        "--train-shards", type=int, default=DEFAULT_TRAIN_SHARDS,
        help=f"train shards to fetch, from the first (default {DEFAULT_TRAIN_SHARDS}); validation is always complete",
    )
    parser.add_argument(
        "--local-dir", default=DEFAULT_LOCAL_DIR,
        help="where datasets/, tokenizers/ and manifest.json go (default: this data/ directory)",
    )
    parser.add_argument("--repo-id", help="dataset repo (default: the variant's published one)")
    parser.add_argument("--revision", default="main", help="branch, tag or commit of the repo")
    parser.add_argument("--endpoint", help="hub address (default: $HF_ENDPOINT or huggingface.co)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        download_variant(args.variant, args.train_shards, args.local_dir, args.repo_id, args.revision, args.endpoint)
    except DownloadError as e:
        print(f"error: variant {args.variant}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build a SentencePiece tokenizer and challenge-format token shards from your own text.

Inputs are read lazily, in the order given:
  *.txt        documents separated by one or more blank lines (each document stripped)
  *.jsonl      one JSON object per line with a string "text" field (like docs_selected.jsonl)
  *.jsonl.xz   the same, xz-compressed

The first --val-docs documents form the validation split, the rest the train split; empty or
whitespace-only documents are skipped (and counted in meta.json). The tokenizer is trained on
the documents that follow the validation ones.
Every document becomes [BOS=1] + tokens (no EOS); each split's token stream is cut into
consecutive shards of at most --shard-tokens tokens. Output is byte-identical for the same
input whatever --workers is. Training reads the train split in order: --shuffle-seed S rewrites
it with the documents in a seeded random order, and --piece-tokens N first cuts documents longer
than N tokens into BOS-led pieces, so that no one document is a long unbroken run of steps
(meta.json lists the longest documents; the build warns about any holding 1% of the split).

    python data/build_shards.py --input docs.jsonl.xz more.txt \\
        --output-dir data/datasets/mydata_sp8192 --tokenizer-out data/tokenizers/mydata_8192_bpe.model

Deliberately does not import torch: it would cost memory in every worker and seconds of start-up.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import itertools
import json
import lzma
import multiprocessing
import os
import shutil
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

SHARD_MAGIC = 20240520
SHARD_VERSION = 1
SHARD_HEADER_WORDS = 256
SHARD_HEADER_BYTES = SHARD_HEADER_WORDS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_VOCAB_SIZE = 1 << 16  # token ids are stored as uint16
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

# SentencePiece skips training sentences longer than max_sentence_length bytes (default 4192)
# with no more than a log line. Longer documents are cut into pieces of at most this size, for
# tokenizer training only.
TOKENIZER_PIECE_BYTES = 1 << 16
# num_threads is recorded inside the .model file, so it is fixed rather than taken from
# os.cpu_count(): the file stays byte-identical across machines (the learned pieces do not
# depend on it either way).
TOKENIZER_TRAIN_THREADS = 16
TOKENIZER_SEED = 1234

# A batch is cut at whichever limit comes first. At most BATCHES_PER_WORKER batches per worker
# are in flight, which bounds the memory held for text and tokens independently of input size.
BATCH_MAX_DOCS = 1024
BATCH_MAX_CHARS = 1 << 18
BATCHES_PER_WORKER = 2

SPLITS = ("val", "train")
META_KEYS = {
    "tokenizer_path", "tokenizer_sha256", "vocab_size", "bos_id", "prefix", "shard_tokens", "val_docs",
    "train_docs", "empty_docs_skipped", "val_tokens", "train_tokens", "longest_train_docs", "train_order",
    "shards",
}
# The loaders read shards in order, so one long document is one unbroken run of training batches; the
# builder lists the longest few and warns about any holding at least this share of the train tokens.
LONGEST_DOCS_KEPT = 5
LONG_DOC_WARN_SHARE = 0.01
REFERENCE_BATCH_TOKENS = 98_304  # the 8-GPU recipe's per-GPU batch, to express a document's length in steps
INPUT_SUFFIXES = (".txt", ".jsonl", ".jsonl.xz")


class BuildError(ValueError):
    """A problem with the inputs or settings, reported to the user without a traceback."""


# ---------------------------------------------------------------- reading documents


def iter_documents(paths: list[str | Path]) -> Iterator[str]:
    """Yields the documents of all `paths` in order. Paths are checked now, contents lazily."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.name.endswith(INPUT_SUFFIXES):
            raise BuildError(f"{path}: unknown input type (expected one of {', '.join(INPUT_SUFFIXES)})")
        if not path.is_file():
            raise BuildError(f"{path}: no such file")
    return itertools.chain.from_iterable(_iter_file(path) for path in paths)


def _iter_file(path: Path) -> Iterator[str]:
    opener = lzma.open if path.name.endswith(".xz") else open
    parse = _parse_txt if path.name.endswith(".txt") else _parse_jsonl
    try:
        with opener(path, "rb") as f:
            yield from parse(path, _decoded_lines(path, f))
    except (lzma.LZMAError, EOFError) as e:
        raise BuildError(f"{path}: corrupt or truncated xz stream ({e})") from None


def _decoded_lines(path: Path, f: Iterable[bytes]) -> Iterator[tuple[int, str]]:
    # Decoding line by line (not through a text wrapper) makes error line numbers exact.
    for lineno, raw in enumerate(f, 1):
        try:
            yield lineno, raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise BuildError(f"{path}:{lineno}: not valid UTF-8 ({e.reason})") from None


def _parse_txt(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[str]:
    doc_lines: list[str] = []
    for _, line in lines:
        if line.strip():
            doc_lines.append(line.rstrip("\r\n"))
        elif doc_lines:
            yield "\n".join(doc_lines).strip()
            doc_lines = []
    if doc_lines:
        yield "\n".join(doc_lines).strip()


def _parse_jsonl(path: Path, lines: Iterable[tuple[int, str]]) -> Iterator[str]:
    for lineno, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise BuildError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise BuildError(f"{path}:{lineno}: expected a JSON object with a string 'text' field")
        yield record["text"]


class NonEmpty:
    """Iterates the documents that are not empty or whitespace-only, counting those it skips."""

    def __init__(self, docs: Iterable[str]):
        self.docs = docs
        self.skipped = 0

    def __iter__(self) -> Iterator[str]:
        for doc in self.docs:
            if doc.strip():
                yield doc
            else:
                self.skipped += 1


# ---------------------------------------------------------------- tokenizer


def train_tokenizer(
    docs: Iterable[str],
    model_path: str | Path,
    vocab_size: int = 8192,
    max_docs: int | None = None,
) -> Path:
    """Trains the challenge's SentencePiece BPE on the first `max_docs` non-empty `docs`.

    Pass documents that exclude the validation split. Writes `model_path` (must end in .model)
    and the .vocab beside it; both are byte-identical for the same documents.
    """
    model_path = Path(model_path)
    if model_path.suffix != ".model":
        raise BuildError(f"{model_path}: tokenizer path must end in .model")
    if vocab_size > MAX_VOCAB_SIZE:
        raise BuildError(f"vocab_size {vocab_size} does not fit uint16 shards (max {MAX_VOCAB_SIZE})")
    source = _TrainingSource(
        piece
        for doc in itertools.islice(NonEmpty(docs), max_docs)
        for piece in split_utf8(doc, TOKENIZER_PIECE_BYTES)
    )
    model = io.BytesIO()
    spm.set_random_generator_seed(TOKENIZER_SEED)  # nothing below should draw random numbers; be sure
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(source),
            model_writer=model,  # not model_prefix: that would record the output path in the file
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            split_digits=True,
            normalization_rule_name="nmt_nfkc",
            add_dummy_prefix=False,
            pad_id=PAD_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            unk_id=UNK_ID,
            character_coverage=1.0,
            max_sentence_length=TOKENIZER_PIECE_BYTES,
            input_sentence_size=0,  # use every sentence given: no random sampling
            shuffle_input_sentence=False,
            num_threads=TOKENIZER_TRAIN_THREADS,
            minloglevel=1,  # warnings, not the INFO chatter
        )
    except RuntimeError as e:
        if source.error is not None:  # SentencePiece turns our input errors into RuntimeError
            raise source.error from None
        if source.count == 0:
            raise BuildError("no non-empty documents to train the tokenizer on") from None
        raise BuildError(f"tokenizer training failed: {e}") from None
    _write_atomically(model_path, model.getvalue())
    _write_atomically(model_path.with_suffix(".vocab"), _vocab_file_text(model.getvalue()).encode("utf-8"))
    return model_path


class _TrainingSource:
    """Wraps the training sentences, counting them and keeping the exception they raised."""

    def __init__(self, items: Iterable[str]):
        self.items = items
        self.count = 0
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[str]:
        try:
            for item in self.items:
                self.count += 1
                yield item
        except Exception as e:
            self.error = e
            raise


def split_utf8(text: str, max_bytes: int) -> Iterator[str]:
    """Cuts `text` into pieces of at most `max_bytes` UTF-8 bytes, before a space where possible."""
    data = text.encode("utf-8")
    start = 0
    while len(data) - start > max_bytes:
        end = data.rfind(b" ", start + 1, start + max_bytes + 1)
        if end == -1:
            end = start + max_bytes
            while data[end] & 0xC0 == 0x80:  # never cut inside a multi-byte character
                end -= 1
        yield data[start:end].decode("utf-8")
        start = end
    yield data[start:].decode("utf-8")


def _vocab_file_text(model_proto: bytes) -> str:
    # The same "piece<TAB>score" lines SentencePiece writes when given a model_prefix.
    sp = spm.SentencePieceProcessor(model_proto=model_proto)
    return "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n" for i in range(sp.vocab_size()))


def load_tokenizer(path: str | Path) -> spm.SentencePieceProcessor:
    """Loads a .model and checks it can produce challenge shards."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"{path}: tokenizer not found")
    try:
        sp = spm.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError) as e:
        raise BuildError(f"{path}: not a SentencePiece model ({e})") from None
    if sp.vocab_size() > MAX_VOCAB_SIZE:
        raise BuildError(f"{path}: vocab size {sp.vocab_size()} does not fit uint16 shards (max {MAX_VOCAB_SIZE})")
    if sp.bos_id() != BOS_ID:
        raise BuildError(f"{path}: BOS id is {sp.bos_id()}, the shard format needs {BOS_ID}")
    return sp


# ---------------------------------------------------------------- shard files


def shard_header(num_tokens: int) -> bytes:
    header = np.zeros(SHARD_HEADER_WORDS, dtype="<i4")
    header[:3] = (SHARD_MAGIC, SHARD_VERSION, num_tokens)
    return header.tobytes()


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Writes one shard file (header + uint16 tokens), atomically."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= MAX_VOCAB_SIZE):
        raise BuildError(f"{path}: token ids must lie in [0, {MAX_VOCAB_SIZE})")
    _write_atomically(Path(path), shard_header(tokens.size) + tokens.astype(TOKEN_DTYPE).tobytes())


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ShardWriter:
    """Streams one split's tokens into consecutive shards of at most `shard_tokens` tokens.

    Tokens go straight to a temporary file whose header is filled in when the shard is complete,
    then the file is renamed: nothing is buffered, and a crash never leaves a truncated shard
    under a final name.
    """

    def __init__(self, output_dir: Path, prefix: str, split: str, shard_tokens: int):
        self.output_dir, self.prefix, self.split = output_dir, prefix, split
        self.shard_tokens = shard_tokens
        self.shards: list[dict] = []  # {"file": name, "tokens": count} per finished shard
        self._file: io.BufferedWriter | None = None
        self._count = 0

    def write(self, tokens: np.ndarray) -> None:
        while tokens.size:
            if self._file is None:
                self._open_next()
            take = min(tokens.size, self.shard_tokens - self._count)
            self._file.write(tokens[:take].tobytes())
            self._count += take
            tokens = tokens[take:]
            if self._count == self.shard_tokens:
                self._finish()

    def close(self) -> list[dict]:
        if self._file is not None:
            self._finish()
        return self.shards

    def _final_path(self) -> Path:
        return self.output_dir / f"{self.prefix}_{self.split}_{len(self.shards):06d}.bin"

    def _open_next(self) -> None:
        path = self._final_path()
        self._file = open(path.with_name(path.name + ".tmp"), "wb")
        self._file.write(shard_header(0))
        self._count = 0

    def _finish(self) -> None:
        path = self._final_path()
        self._file.seek(0)
        self._file.write(shard_header(self._count))
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._file.name, path)
        self._file = None
        self.shards.append({"file": path.name, "tokens": self._count})


# ---------------------------------------------------------------- encoding


def encode_documents(sp: spm.SentencePieceProcessor, texts: list[str]) -> np.ndarray:
    """[BOS] + token ids of every text, concatenated as little-endian uint16."""
    docs = []
    for text in texts:  # one at a time: a Python list of ids costs ~36 bytes per token
        ids = sp.encode(text)
        doc = np.empty(len(ids) + 1, dtype=TOKEN_DTYPE)
        doc[0] = BOS_ID
        doc[1:] = ids
        docs.append(doc)
    return np.concatenate(docs)


_worker_tokenizer: spm.SentencePieceProcessor | None = None


def _start_worker(tokenizer_path: str) -> None:
    global _worker_tokenizer
    _worker_tokenizer = spm.SentencePieceProcessor(model_file=tokenizer_path)


def _encode_in_worker(texts: list[str]) -> np.ndarray:
    return encode_documents(_worker_tokenizer, texts)


def _batches(docs: Iterable[str], val_docs: int) -> Iterator[tuple[str, list[str]]]:
    """Groups documents into (split, texts) batches; no batch spans both splits."""
    batch: list[str] = []
    chars = 0
    split = "val"
    for index, doc in enumerate(docs):
        doc_split = "val" if index < val_docs else "train"
        if batch and (doc_split != split or len(batch) >= BATCH_MAX_DOCS or chars >= BATCH_MAX_CHARS):
            yield split, batch
            batch, chars = [], 0
        split = doc_split
        batch.append(doc)
        chars += len(doc)
    if batch:
        yield split, batch


def _encode_in_order(
    batches: Iterable[tuple[str, list[str]]], sp: spm.SentencePieceProcessor, tokenizer_path: Path, workers: int
) -> Iterator[tuple[str, int, np.ndarray]]:
    """Yields (split, doc count, tokens) per batch, in input order.

    Batches are submitted one by one and the oldest is awaited once the window is full
    (Pool.imap would read the whole input ahead of the workers). A process pool executor, unlike
    multiprocessing.Pool, raises instead of hanging when a worker dies (e.g. killed for memory).
    """
    if workers == 1:
        for split, texts in batches:
            yield split, len(texts), encode_documents(sp, texts)
        return
    # spawn, not fork: the parent may already run threads (tqdm's monitor, a caller's own).
    with ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(str(tokenizer_path),),
    ) as pool:
        pending: deque[tuple[str, int, Future]] = deque()
        for split, texts in batches:
            pending.append((split, len(texts), pool.submit(_encode_in_worker, texts)))
            if len(pending) >= workers * BATCHES_PER_WORKER:
                oldest_split, n_docs, future = pending.popleft()
                yield oldest_split, n_docs, future.result()
        while pending:
            oldest_split, n_docs, future = pending.popleft()
            yield oldest_split, n_docs, future.result()


# ---------------------------------------------------------------- building


def build_shards(
    docs: Iterable[str],
    tokenizer_path,
    output_dir,
    prefix: str = "fineweb",
    val_docs: int = 50_000,
    shard_tokens: int = 100_000_000,
    workers: int | None = None,
    extra_meta: dict | None = None,
    progress: bool = True,
    shuffle_seed: int | None = None,
    piece_tokens: int = 0,
) -> dict:
    """Tokenizes `docs` into `{output_dir}/{prefix}_{val,train}_NNNNNN.bin` and writes meta.json.

    The first `val_docs` non-empty documents go to validation. Empty or whitespace-only documents
    are skipped and counted. Previous shards with this prefix in `output_dir` are removed first.
    `extra_meta` is merged into the returned (and written) meta dict at top level.
    With `shuffle_seed`, the train split is rewritten with its documents in a seeded random order,
    each first cut into pieces of at most `piece_tokens` tokens after its BOS when `piece_tokens` > 0
    (every piece starts with BOS, so a piece is a document to the trainer). Validation stays as read.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    _check_build_settings(val_docs, shard_tokens, workers)
    if piece_tokens < 0 or (piece_tokens and shuffle_seed is None):
        raise BuildError(f"piece_tokens must be >= 0 and needs a shuffle seed, got {piece_tokens} "
                         f"with shuffle_seed {shuffle_seed}")
    clashes = sorted(set(extra_meta or {}) & META_KEYS)
    if clashes:
        raise BuildError(f"extra_meta may not override {clashes}")
    tokenizer_path = Path(tokenizer_path)
    sp = load_tokenizer(tokenizer_path)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _remove_previous_outputs(output_dir, prefix)

    non_empty = NonEmpty(docs)
    encoded = _encode_in_order(_batches(non_empty, val_docs), sp, tokenizer_path, workers)
    doc_counts, shards, longest = _write_splits(encoded, output_dir, prefix, shard_tokens, progress)
    train_order = {"shuffle_seed": shuffle_seed, "piece_tokens": piece_tokens, "pieces": doc_counts["train"]}
    if shuffle_seed is not None:
        shards["train"], train_order["pieces"] = reorder_train_split(output_dir, prefix, shards["train"], shard_tokens,
                                                                     shuffle_seed, piece_tokens)
    meta = {
        "tokenizer_path": str(tokenizer_path),
        "tokenizer_sha256": file_sha256(tokenizer_path),
        "vocab_size": sp.vocab_size(),
        "bos_id": BOS_ID,
        "prefix": prefix,
        "shard_tokens": shard_tokens,
        "val_docs": doc_counts["val"],
        "train_docs": doc_counts["train"],
        "empty_docs_skipped": non_empty.skipped,
        "val_tokens": sum(s["tokens"] for s in shards["val"]),
        "train_tokens": sum(s["tokens"] for s in shards["train"]),
        "longest_train_docs": longest,
        "train_order": train_order,
        "shards": shards,
    }
    assert set(meta) == META_KEYS
    meta.update(extra_meta or {})
    _write_atomically(output_dir / "meta.json", (json.dumps(meta, indent=2) + "\n").encode("utf-8"))
    _report(meta, val_docs)
    return meta


def _write_splits(
    encoded: Iterable[tuple[str, int, np.ndarray]], output_dir: Path, prefix: str, shard_tokens: int, progress: bool
) -> tuple[dict[str, int], dict[str, list[dict]], list[dict]]:
    """Writes the encoded batches (all val, then all train) to shards.

    Returns docs and shards per split, and the longest train documents (most tokens first).
    """
    doc_counts = dict.fromkeys(SPLITS, 0)
    longest: list[dict] = []
    shards: dict[str, list[dict]] = {split: [] for split in SPLITS}
    writer: ShardWriter | None = None
    total_tokens = train_tokens = 0
    with tqdm(desc="tokenizing", unit="doc", disable=not progress, file=sys.stderr) as bar:
        for split, n_docs, tokens in encoded:
            if writer is None or writer.split != split:
                if writer is not None:
                    shards[writer.split] = writer.close()
                writer = ShardWriter(output_dir, prefix, split, shard_tokens)
            writer.write(tokens)
            if split == "train":
                longest = _longest_docs(longest, tokens, n_docs, doc_counts, train_tokens)
                train_tokens += tokens.size
            doc_counts[split] += n_docs
            total_tokens += tokens.size
            bar.update(n_docs)
            bar.set_postfix(tokens=f"{total_tokens:,}", refresh=False)
    if writer is not None:
        shards[writer.split] = writer.close()
    return doc_counts, shards, longest


def _longest_docs(longest: list[dict], tokens: np.ndarray, n_docs: int, doc_counts: dict[str, int],
                  train_offset: int) -> list[dict]:
    """Merges one train batch's documents (each starts with BOS) into the running top LONGEST_DOCS_KEPT."""
    starts = np.flatnonzero(tokens == BOS_ID)
    if starts.size != n_docs or (n_docs and starts[0] != 0):
        raise BuildError(f"internal: a batch of {n_docs} documents has {starts.size} BOS tokens")
    lengths = np.diff(np.append(starts, tokens.size))
    for i in np.argsort(-lengths, kind="stable")[:LONGEST_DOCS_KEPT]:
        longest.append({"doc_index": doc_counts["val"] + doc_counts["train"] + int(i), "tokens": int(lengths[i]),
                        "train_token_offset": train_offset + int(starts[i])})
    return sorted(longest, key=lambda d: (-d["tokens"], d["doc_index"]))[:LONGEST_DOCS_KEPT]


def reorder_train_split(output_dir: Path, prefix: str, shards: list[dict], shard_tokens: int, seed: int,
                        piece_tokens: int) -> tuple[list[dict], int]:
    """Rewrites the train shards with their documents (or pieces of them) in a seeded random order.

    The loaders read shards front to back, so without this a long document is one unbroken run of
    training steps. Memory holds two offsets per piece; tokens are copied from memory-mapped shards
    into new ones written beside them, which replace the old ones only once all are written.
    Returns the new shard list and the number of pieces.
    """
    sources = [np.memmap(output_dir / s["file"], dtype="<u2", mode="r", offset=SHARD_HEADER_BYTES) for s in shards]
    bounds = np.cumsum([0] + [m.size for m in sources])
    starts = np.concatenate([np.flatnonzero(np.asarray(m) == BOS_ID) + bounds[i] for i, m in enumerate(sources)]
                            + [np.zeros(0, np.int64)]).astype(np.int64)
    ends = np.append(starts[1:], bounds[-1]).astype(np.int64)
    if piece_tokens:
        # Document [BOS, t0, t1, ...]: the first piece keeps the BOS and piece_tokens tokens; each later
        # piece is piece_tokens more tokens, given a BOS of its own when written.
        n_pieces = np.maximum(1, -(-(ends - starts - 1) // piece_tokens))
        first = np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
        k = np.arange(first.size) - first  # piece number inside its document
        doc_start = np.repeat(starts, n_pieces)
        begin = np.where(k == 0, doc_start, doc_start + 1 + k * piece_tokens)
        end = np.minimum(doc_start + 1 + (k + 1) * piece_tokens, np.repeat(ends, n_pieces))
    else:
        begin, end, k = starts, ends, np.zeros(starts.size, np.int64)
    order = np.random.default_rng(seed).permutation(begin.size)
    staging = output_dir / f".{prefix}_train_reorder"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    writer = ShardWriter(staging, prefix, "train", shard_tokens)
    bos = np.array([BOS_ID], dtype="<u2")
    for i in order:
        if k[i]:
            writer.write(bos)
        b, e = int(begin[i]), int(end[i])
        while b < e:  # a piece may span two source shards
            s = int(np.searchsorted(bounds, b, side="right")) - 1
            stop = min(e, int(bounds[s + 1]))
            writer.write(np.asarray(sources[s][b - bounds[s]:stop - bounds[s]]))
            b = stop
    new_shards = writer.close()
    del sources
    for old in shards:
        (output_dir / old["file"]).unlink()
    for new in new_shards:
        os.replace(staging / new["file"], output_dir / new["file"])
    staging.rmdir()
    return new_shards, int(begin.size)


def _check_build_settings(val_docs: int, shard_tokens: int, workers: int) -> None:
    if val_docs < 0:
        raise BuildError(f"val_docs must be >= 0, got {val_docs}")
    if not 0 < shard_tokens < 2**31:  # the header stores the count as int32
        raise BuildError(f"shard_tokens must be in [1, 2**31), got {shard_tokens}")
    if workers < 1:
        raise BuildError(f"workers must be >= 1, got {workers}")


def _remove_previous_outputs(output_dir: Path, prefix: str) -> None:
    # A previous, larger build would otherwise leave extra shards that training would pick up.
    (output_dir / "meta.json").unlink(missing_ok=True)
    for split in SPLITS:
        for pattern in (f"{prefix}_{split}_*.bin", f"{prefix}_{split}_*.bin.tmp"):
            for stale in output_dir.glob(pattern):
                stale.unlink()


def _report(meta: dict, val_docs_requested: int) -> None:
    order = meta["train_order"]
    for doc in meta["longest_train_docs"]:
        share = doc["tokens"] / max(meta["train_tokens"], 1)
        # Cut into pieces, a document is at most piece_tokens + 1 consecutive tokens wherever it lands.
        run = min(doc["tokens"], order["piece_tokens"] + 1) if order["piece_tokens"] else doc["tokens"]
        if run / max(meta["train_tokens"], 1) < LONG_DOC_WARN_SHARE:
            continue
        if order["shuffle_seed"] is not None:
            print(f"build_shards: warning: document {doc['doc_index']} holds {share:.1%} of the train split; "
                  f"shuffled whole, it is still {run:,} consecutive tokens (cut it with --piece-tokens)", file=sys.stderr)
        else:
            print(
                f"build_shards: warning: document {doc['doc_index']} (0-based, non-empty documents) holds "
                f"{doc['tokens']:,} tokens, {share:.1%} of the train split, at train tokens "
                f"{doc['train_token_offset']:,}..{doc['train_token_offset'] + doc['tokens']:,}: training reads it as "
                f"~{doc['tokens'] / REFERENCE_BATCH_TOKENS:,.1f} consecutive steps of {REFERENCE_BATCH_TOKENS:,} tokens, "
                f"and validation loss drifts while it does (--shuffle-seed with --piece-tokens spreads it out)",
                file=sys.stderr,
            )
    if meta["empty_docs_skipped"]:
        print(f"build_shards: skipped {meta['empty_docs_skipped']} empty documents", file=sys.stderr)
    if meta["val_docs"] < val_docs_requested:
        print(
            f"build_shards: warning: only {meta['val_docs']} documents, fewer than the "
            f"{val_docs_requested} asked for validation; the train split is empty",
            file=sys.stderr,
        )


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="input files (.txt, .jsonl, .jsonl.xz), in order")
    parser.add_argument("--output-dir", required=True, help="directory for the shards and meta.json")
    tokenizer = parser.add_mutually_exclusive_group(required=True)
    tokenizer.add_argument("--tokenizer-out", help="train a tokenizer and write it here (NAME.model)")
    tokenizer.add_argument("--tokenizer", help="reuse this existing .model instead of training one")
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument(
        "--tokenizer-train-docs",
        type=int,
        default=200_000,
        help="train the tokenizer on at most this many documents following the validation ones",
    )
    parser.add_argument("--val-docs", type=int, default=50_000, help="the first N documents form the validation split")
    parser.add_argument("--shard-tokens", type=int, default=100_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="tokenizer processes")
    parser.add_argument("--prefix", default="fineweb", help="shard file prefix")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--shuffle-seed", type=int, default=None,
                        help="rewrite the train split with its documents in this seed's random order (default: input order)")
    parser.add_argument("--piece-tokens", type=int, default=0,
                        help="with --shuffle-seed: first cut train documents into pieces of at most this many tokens, "
                             "each starting with BOS (0: keep documents whole)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        if args.tokenizer:
            tokenizer_path = Path(args.tokenizer)
        else:
            train_docs = itertools.islice(NonEmpty(iter_documents(args.input)), args.val_docs, None)
            tokenizer_path = train_tokenizer(train_docs, args.tokenizer_out, args.vocab_size, args.tokenizer_train_docs)
        extra_meta = {
            "inputs": [str(path) for path in args.input],
            "tokenizer_trained": not args.tokenizer,
            "tokenizer_train_docs": None if args.tokenizer else args.tokenizer_train_docs,
        }
        build_shards(
            iter_documents(args.input),
            tokenizer_path,
            args.output_dir,
            prefix=args.prefix,
            val_docs=args.val_docs,
            shard_tokens=args.shard_tokens,
            workers=args.workers,
            extra_meta=extra_meta,
            progress=not args.no_progress,
            shuffle_seed=args.shuffle_seed,
            piece_tokens=args.piece_tokens,
        )
    except BuildError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()

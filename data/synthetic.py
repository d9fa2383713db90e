"""The embedded default data: a synthetic corpus whose entropy rate is known exactly.

Documents come from a fixed, seeded first-order Markov source over words: a START state, one state per word,
and an absorbing END. Each state has a few successors with Dirichlet-drawn probabilities; a document is the
words visited from START to END joined by single spaces. Because documents are independent and the text
determines the word sequence, the best possible code length of a document is its source log-loss, so

    entropy_floor_bpb = E[-log2 P(document)] / E[UTF-8 bytes of document]

computed exactly from the chain's fundamental matrix. The trainer logs it beside val_bpb: a val_bpb below it
means the byte accounting is wrong. Some words carry multi-byte UTF-8 characters (NFKC-stable) so that
byte-fallback and multi-byte pieces are exercised.

    python data/synthetic.py [--train-docs 20000] [--val-docs 500]    (writes data/datasets/synthetic_sp8192/)

The tokenizer is trained on the first train documents unless it exists; the settings it was trained with (and its
sha256) are recorded beside it in <tokenizer>.settings.json, and an existing tokenizer is reused only when that
record matches the requested settings; otherwise the build stops and names the differences.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_shards import BuildError, build_shards, file_sha256, train_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parent
LETTERS = "abcdefghijklmnopqrstuvwxyz"
EXTRA_CHARS = ["é", "ü", "ß", "ø", "€", "ñ", "ç", "日本", "🙂"]  # 2-, 3- and 4-byte UTF-8, unchanged by NFKC
TOKENIZER_DOCS = 5000  # the tokenizer is trained on at most this many train documents


class MarkovSource:
    """START = state 0, word w = state w + 1; transition matrix rows sum to 1 over words + END (last column)."""

    def __init__(self, num_words: int = 1500, fanout: int = 12, mean_doc_words: float = 60.0, seed: int = 0):
        rng = np.random.default_rng(seed)
        words = set()
        while len(words) < num_words:
            word = "".join(rng.choice(list(LETTERS), size=int(rng.integers(2, 10))))
            if rng.random() < 0.04:
                word = word[: len(word) // 2] + str(rng.choice(EXTRA_CHARS)) + word[len(word) // 2:]
            words.add(word)
        self.words = sorted(words)
        n = num_words
        self.P = np.zeros((n + 1, n + 1))  # rows: START + words; columns: words + END
        zipf = 1.0 / np.arange(1, n + 1) ** 0.8
        for s in range(n + 1):
            succ = rng.choice(n, size=fanout, replace=False, p=zipf / zipf.sum())
            self.P[s, succ] = rng.dirichlet(np.full(fanout, 0.5))
            if s > 0:  # a document has at least one word; afterwards it ends with probability 1/mean
                self.P[s] *= 1 - 1 / mean_doc_words
                self.P[s, n] = 1 / mean_doc_words
        self.cum = np.cumsum(self.P, axis=1)
        self.word_bytes = np.array([len(w.encode()) for w in self.words], dtype=np.float64)

    def documents(self, count: int, seed: int):
        """Yield (text, -log2 P(text)) for `count` documents."""
        rng = np.random.default_rng(seed)
        n = len(self.words)
        for _ in range(count):
            state, words, bits = 0, [], 0.0
            while True:
                nxt = min(int(np.searchsorted(self.cum[state], rng.random() * self.cum[state, -1], side="right")), n)
                bits -= math.log2(self.P[state, nxt])
                if nxt == n:
                    break
                words.append(self.words[nxt])
                state = nxt + 1
            yield " ".join(words), bits

    def entropy_floor_bpb(self) -> float:
        """E[document entropy] / E[document bytes] from the expected visits of each transient state."""
        n = len(self.words)
        Q = np.zeros((n + 1, n + 1))  # transient -> transient (state index = word + 1)
        Q[:, 1:] = self.P[:, :n]
        visits = np.linalg.solve((np.eye(n + 1) - Q).T, np.eye(n + 1)[0])  # row 0 of (I - Q)^-1
        with np.errstate(divide="ignore", invalid="ignore"):
            row_entropy = -np.nansum(np.where(self.P > 0, self.P * np.log2(self.P), 0.0), axis=1)
        emitted_bytes = self.P[:, :n] @ self.word_bytes  # expected bytes of the next word, per state
        spaces = self.P[1:, :n].sum(axis=1)  # every word after the first is preceded by one space
        expected_bytes = visits @ emitted_bytes + visits[1:] @ spaces
        return float(visits @ row_entropy / expected_bytes)


def build(out_dir: Path, tokenizer_path: Path, train_docs: int, val_docs: int, vocab_size: int, seed: int,
          workers: int | None = None, progress: bool = True) -> dict:
    source = MarkovSource(seed=seed)
    total = val_docs + train_docs
    sample_bits, sample_bytes = 0.0, 0

    def texts(count: int, doc_seed: int, measure: bool):
        nonlocal sample_bits, sample_bytes
        for i, (text, bits) in enumerate(source.documents(count, doc_seed)):
            if measure and i < val_docs:
                sample_bits, sample_bytes = sample_bits + bits, sample_bytes + len(text.encode())
            yield text

    # Everything that decides the tokenizer's bytes: the source, its vocabulary, and which documents it reads.
    settings = dict(seed=seed, vocab_size=vocab_size, val_docs=val_docs, tokenizer_docs=min(train_docs, TOKENIZER_DOCS))
    if tokenizer_path.exists():
        check_tokenizer(tokenizer_path, settings, out_dir / "meta.json")
    else:
        tokenizer_path.parent.mkdir(parents=True, exist_ok=True)
        train_tokenizer((t for i, t in enumerate(texts(total, seed + 1, False)) if i >= val_docs),
                        tokenizer_path, vocab_size=vocab_size, max_docs=settings["tokenizer_docs"])
        record_settings(tokenizer_path, settings)
    floor = source.entropy_floor_bpb()
    meta = build_shards(texts(total, seed + 1, True), tokenizer_path, out_dir, prefix="synthetic",
                        val_docs=val_docs, workers=workers, progress=progress,
                        extra_meta=dict(source="synthetic Markov word source", seed=seed,
                                        entropy_floor_bpb=floor))
    meta["val_sample_source_bpb"] = sample_bits / max(sample_bytes, 1)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def settings_path(tokenizer_path: Path) -> Path:
    return tokenizer_path.with_suffix(".settings.json")


def record_settings(tokenizer_path: Path, settings: dict) -> None:
    """The settings a tokenizer was trained with, beside it, with its sha256 (so a changed file is noticed)."""
    record = dict(settings=settings, sha256=file_sha256(tokenizer_path))
    settings_path(tokenizer_path).write_text(json.dumps(record, indent=1) + "\n")


def settings_from_meta(meta_path: Path, tokenizer_path: Path) -> dict | None:
    """The settings of a tokenizer built before settings records existed, from the meta.json of the build that used
    it: only if that build names this very file (sha256); None otherwise."""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("tokenizer_sha256") != file_sha256(tokenizer_path):
            return None
        return dict(seed=meta["seed"], vocab_size=meta["vocab_size"], val_docs=meta["val_docs"],
                    tokenizer_docs=min(meta["train_docs"], TOKENIZER_DOCS))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def check_tokenizer(tokenizer_path: Path, settings: dict, meta_path: Path) -> None:
    """BuildError unless the existing tokenizer was trained by this script with exactly these settings (known from its
    settings record, or for an older tokenizer from the meta.json of the build that made it, then recorded)."""
    record_path = settings_path(tokenizer_path)
    remedy = (f"delete {tokenizer_path} (and its .vocab and .settings.json) to train a new one, or pass --tokenizer "
              "with another path")
    try:
        record = json.loads(record_path.read_text())
        recorded, sha256 = record["settings"], record["sha256"]
        if not isinstance(recorded, dict):
            raise TypeError(f"settings is {recorded!r}, not a mapping")
    except FileNotFoundError:
        if (recorded := settings_from_meta(meta_path, tokenizer_path)) is not None and recorded == settings:
            record_settings(tokenizer_path, recorded)
            print(f"{tokenizer_path}: settings taken from {meta_path} (the build that made it) and recorded in {record_path}")
            return
        raise BuildError(f"{tokenizer_path} exists but {record_path}, the record of its settings, does not: "
                         f"its settings are unknown; {remedy}") from None
    except (ValueError, KeyError, TypeError) as e:
        raise BuildError(f"{record_path} is not a settings record ({type(e).__name__}: {e}); {remedy}") from None
    if file_sha256(tokenizer_path) != sha256:
        raise BuildError(f"{tokenizer_path} is not the file {record_path} describes (sha256 differs); {remedy}")
    differ = [f"{k} {recorded.get(k)} (requested {v})" for k, v in settings.items() if recorded.get(k) != v]
    if differ:
        raise BuildError(f"{tokenizer_path} was trained with other settings: {', '.join(differ)}; pass those "
                         f"settings, or {remedy}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "datasets" / "synthetic_sp8192")
    parser.add_argument("--tokenizer", type=Path, default=ROOT / "tokenizers" / "synthetic_8192_bpe.model")
    parser.add_argument("--train-docs", type=int, default=20000)
    parser.add_argument("--val-docs", type=int, default=500)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    try:
        meta = build(args.out_dir, args.tokenizer, args.train_docs, args.val_docs, args.vocab_size, args.seed,
                     args.workers, not args.no_progress)
    except BuildError as e:
        sys.exit(f"error: {e}")
    print(f"synthetic data in {args.out_dir}: train_tokens:{meta['train_tokens']} val_tokens:{meta['val_tokens']} "
          f"entropy_floor_bpb:{meta['entropy_floor_bpb']:.6f} val_sample_source_bpb:{meta['val_sample_source_bpb']:.6f}")


if __name__ == "__main__":
    main()

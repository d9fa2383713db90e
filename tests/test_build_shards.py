"""data/build_shards.py: tokenizer training, shard format, splits, determinism, errors, memory."""

from __future__ import annotations

import json
import lzma
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "data" / "build_shards.py"
sys.path.insert(0, str(SCRIPT.parent))

import build_shards  # noqa: E402
from build_shards import BuildError  # noqa: E402

# Single spaces, no leading/trailing whitespace, already NFKC: nmt_nfkc leaves these unchanged,
# so decoding must give back exactly the input. No "q" anywhere: only validation documents have it.
WORDS = (
    "the cat sat on a mat café naïve € 🙂 2024 3.14 river stone light green über déjà vu 日本 語 "
    "model token shard data golf par bird fly over hill under sky blue red wind rain sun"
).split()
VAL_ONLY_WORD = "quiq"  # the letter q occurs only in validation documents
LONG_DOC_WORD = "жук"  # occurs only at the end of one document longer than 64 KiB
NUM_VAL = 20
VOCAB_SIZE = 400


def make_corpus() -> list[str]:
    rng = random.Random(1234)

    def doc(extra: list[str] = ()) -> str:
        return " ".join(rng.choice(WORDS + list(extra)) for _ in range(rng.randint(3, 60)))

    val = [doc([VAL_ONLY_WORD] * 5) for _ in range(NUM_VAL)]
    train = [doc() for _ in range(300)]
    # Longer than SentencePiece's default max_sentence_length (4192 bytes) and than the 64 KiB
    # pieces it is cut into: only its tail holds LONG_DOC_WORD.
    train[7] = " ".join(["green"] * 14000 + [LONG_DOC_WORD] * 30)
    return val + train


CORPUS = make_corpus()


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def read_shard(path: Path) -> np.ndarray:
    header = np.fromfile(path, dtype="<i4", count=256)
    assert header[0] == build_shards.SHARD_MAGIC and header[1] == build_shards.SHARD_VERSION
    assert not header[3:].any()
    assert path.stat().st_size == 1024 + 2 * header[2]
    return np.fromfile(path, dtype="<u2", offset=1024)


def split_stream(meta: dict, output_dir: Path, split: str) -> np.ndarray:
    parts = [read_shard(output_dir / shard["file"]) for shard in meta["shards"][split]]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint16)


def decode_documents(sp: spm.SentencePieceProcessor, stream: np.ndarray) -> list[str]:
    starts = np.flatnonzero(stream == build_shards.BOS_ID)
    assert stream.size == 0 or starts[0] == 0
    return [sp.decode(doc[1:].tolist()) for doc in np.split(stream, starts)[1:]]


def run_cli(*args: str) -> None:
    build_shards.main([*map(str, args), "--no-progress"])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One CLI build that trains its tokenizer: the corpus as JSONL, 2 workers, small shards."""
    work = tmp_path_factory.mktemp("built")
    source = write_jsonl(work / "docs.jsonl", CORPUS)
    tokenizer = work / "tok" / "test_bpe.model"
    out = work / "out"
    run_cli(
        "--input", source, "--output-dir", out, "--tokenizer-out", tokenizer, "--vocab-size", VOCAB_SIZE,
        "--val-docs", NUM_VAL, "--shard-tokens", 997, "--workers", 2,
    )
    meta = json.loads((out / "meta.json").read_text())
    return {"source": source, "tokenizer": tokenizer, "out": out, "meta": meta,
            "sp": spm.SentencePieceProcessor(model_file=str(tokenizer))}


def test_round_trip_gives_back_every_document(built):
    sp, meta, out = built["sp"], built["meta"], built["out"]
    decoded = [doc for split in ("val", "train") for doc in decode_documents(sp, split_stream(meta, out, split))]
    assert decoded == CORPUS


def test_val_split_is_exactly_the_first_documents(built):
    sp, meta, out = built["sp"], built["meta"], built["out"]
    assert decode_documents(sp, split_stream(meta, out, "val")) == CORPUS[:NUM_VAL]
    assert (meta["val_docs"], meta["train_docs"]) == (NUM_VAL, len(CORPUS) - NUM_VAL)
    assert all(shard["file"].startswith("fineweb_val_") for shard in meta["shards"]["val"])


def test_tokenizer_has_the_challenge_settings_and_never_saw_validation(built):
    sp = built["sp"]
    assert (sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert sp.vocab_size() == VOCAB_SIZE
    pieces = {sp.id_to_piece(i) for i in range(sp.vocab_size())}
    assert not any("q" in piece for piece in pieces)  # character_coverage=1.0 would have added it
    assert "<0x71>" in sp.encode(VAL_ONLY_WORD, out_type=str)  # "q" by byte fallback
    assert sp.encode("2024", out_type=str) == ["2", "0", "2", "4"]  # split_digits
    assert built["tokenizer"].with_suffix(".vocab").read_text(encoding="utf-8").count("\n") == VOCAB_SIZE


def test_documents_longer_than_sentencepiece_limit_train_the_tokenizer(built):
    pieces = {built["sp"].id_to_piece(i) for i in range(built["sp"].vocab_size())}
    assert "ж" in pieces


def test_split_utf8_keeps_characters_whole_and_prefers_spaces():
    text = "ab cd€€€€ ef" + "€" * 10
    pieces = list(build_shards.split_utf8(text, 7))
    assert "".join(pieces) == text
    assert all(len(p.encode()) <= 7 for p in pieces)
    assert pieces[:2] == ["ab", " cd€"]
    assert list(build_shards.split_utf8("short", 7)) == ["short"]


def test_shards_are_cut_at_exactly_shard_tokens(built, tmp_path):
    meta = built["meta"]
    for split in ("val", "train"):
        counts = [shard["tokens"] for shard in meta["shards"][split]]
        assert counts[:-1] == [997] * (len(counts) - 1) and 0 < counts[-1] <= 997
        assert sum(counts) == meta[f"{split}_tokens"]
    assert len(meta["shards"]["train"]) > 2

    one_shard = build_shards.build_shards(
        CORPUS, built["tokenizer"], tmp_path, val_docs=NUM_VAL, shard_tokens=10**6, workers=1, progress=False
    )
    for split in ("val", "train"):
        assert len(one_shard["shards"][split]) == 1
        assert np.array_equal(split_stream(meta, built["out"], split), split_stream(one_shard, tmp_path, split))


def test_output_is_byte_identical_whatever_the_worker_count(built, tmp_path):
    outputs = {}
    for workers in (1, 3):
        out = tmp_path / f"w{workers}"
        run_cli(
            "--input", built["source"], "--output-dir", out, "--tokenizer", built["tokenizer"],
            "--val-docs", NUM_VAL, "--shard-tokens", 997, "--workers", workers,
        )
        outputs[workers] = {p.name: p.read_bytes() for p in out.iterdir()}
    reference = {p.name: p.read_bytes() for p in built["out"].iterdir() if p.suffix == ".bin"}
    for files in outputs.values():
        assert {name: data for name, data in files.items() if name.endswith(".bin")} == reference
    assert outputs[1]["meta.json"] == outputs[3]["meta.json"]


def test_tokenizer_training_is_deterministic(tmp_path):
    docs = CORPUS[NUM_VAL:]
    first = build_shards.train_tokenizer(docs, tmp_path / "a" / "x.model", vocab_size=VOCAB_SIZE)
    second = build_shards.train_tokenizer(iter(docs), tmp_path / "b" / "y.model", vocab_size=VOCAB_SIZE)
    assert first.read_bytes() == second.read_bytes()
    assert first.with_suffix(".vocab").read_bytes() == second.with_suffix(".vocab").read_bytes()


def test_all_input_formats_are_read_in_the_order_given(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_bytes("  first doc\nsecond line  \n\n\n   \nnext café doc\r\n\r\nlast\n".encode())
    jsonl = write_jsonl(tmp_path / "b.jsonl", ["j1", "j2 naïve"])
    xz = tmp_path / "c.jsonl.xz"
    xz.write_bytes(lzma.compress(write_jsonl(tmp_path / "c.jsonl", ["x1 🙂"]).read_bytes()))

    docs = list(build_shards.iter_documents([xz, txt, jsonl]))

    assert docs == ["x1 🙂", "first doc\nsecond line", "next café doc", "last", "j1", "j2 naïve"]


BAD_INPUTS = {
    "notes.csv": (b"a,b\n", "unknown input type"),
    "bad_json.jsonl": (b'{"text": "ok"}\n{"text": oops}\n', "bad_json.jsonl:2: invalid JSON"),
    "no_text.jsonl": (b'{"text": "ok"}\n{"body": "x"}\n', "no_text.jsonl:2: expected a JSON object"),
    "int_text.jsonl": (b'{"text": 5}\n', "int_text.jsonl:1: expected a JSON object"),
    "list.jsonl": (b'["text"]\n', "list.jsonl:1: expected a JSON object"),
    "blank_line.jsonl": (b'{"text": "a"}\n\n{"text": "b"}\n', "blank_line.jsonl:2: invalid JSON"),
    "latin1.txt": (b"fine\n\ncaf\xe9\n", "latin1.txt:3: not valid UTF-8"),
    "cut.jsonl.xz": (lzma.compress(b'{"text": "a"}\n' * 1000)[:-20], "cut.jsonl.xz: corrupt or truncated xz"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_bad_inputs_fail_naming_the_file_and_line(tmp_path, name):
    content, message = BAD_INPUTS[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(BuildError, match=message):
        list(build_shards.iter_documents([path]))


def test_missing_input_fails_before_reading_anything(tmp_path):
    with pytest.raises(BuildError, match="nowhere.txt: no such file"):
        build_shards.iter_documents([write_jsonl(tmp_path / "ok.jsonl", ["a"]), tmp_path / "nowhere.txt"])


def test_cli_script_exits_nonzero_on_a_bad_line(built, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "fine"}\nnot json\n')
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--input", str(bad), "--output-dir", str(tmp_path / "out"),
         "--tokenizer", str(built["tokenizer"]), "--val-docs", "1", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert f"{bad}:3: invalid JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_script_runs_from_the_repo_root_with_a_worker_pool(built, tmp_path):
    result = subprocess.run(
        [sys.executable, "data/build_shards.py", "--input", str(built["source"]), "--output-dir", str(tmp_path / "out"),
         "--tokenizer-out", str(tmp_path / "tok.model"), "--vocab-size", str(VOCAB_SIZE), "--val-docs", str(NUM_VAL),
         "--shard-tokens", "997", "--workers", "2", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tok.model").read_bytes() == built["tokenizer"].read_bytes()
    for shard in built["out"].glob("*.bin"):
        assert (tmp_path / "out" / shard.name).read_bytes() == shard.read_bytes()


def test_no_documents_left_for_the_tokenizer(tmp_path):
    source = write_jsonl(tmp_path / "two.jsonl", ["a b", "c d"])
    with pytest.raises(SystemExit, match="no non-empty documents to train the tokenizer on"):
        run_cli("--input", source, "--output-dir", tmp_path / "o", "--tokenizer-out", tmp_path / "t.model",
                "--val-docs", 2)


def test_bad_line_in_tokenizer_training_data_is_reported_as_such(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "one two"}\n' * 5 + "{oops\n")
    with pytest.raises(SystemExit, match="bad.jsonl:6: invalid JSON"):
        run_cli("--input", bad, "--output-dir", tmp_path / "o", "--tokenizer-out", tmp_path / "t.model",
                "--val-docs", 1)


def test_empty_documents_are_skipped_and_counted(built, tmp_path, capsys):
    docs = ["one doc", "", "two doc", "  \n ", "three"]
    meta = build_shards.build_shards(docs, built["tokenizer"], tmp_path, val_docs=1, workers=1, progress=False)
    assert meta["empty_docs_skipped"] == 2
    assert (meta["val_docs"], meta["train_docs"]) == (1, 2)
    assert decode_documents(built["sp"], split_stream(meta, tmp_path, "train")) == ["two doc", "three"]
    assert "skipped 2 empty documents" in capsys.readouterr().err


def test_meta_records_the_build(built, tmp_path):
    meta = built["meta"]
    assert meta["tokenizer_path"] == str(built["tokenizer"])
    assert meta["tokenizer_sha256"] == build_shards.file_sha256(built["tokenizer"])
    assert meta["vocab_size"] == VOCAB_SIZE
    assert meta["inputs"] == [str(built["source"])]
    assert meta["empty_docs_skipped"] == 0
    assert meta["tokenizer_trained"] is True and meta["tokenizer_train_docs"] == 200_000

    extra = build_shards.build_shards(
        ["a b"], built["tokenizer"], tmp_path, val_docs=0, workers=1, progress=False, extra_meta={"source": "unit"}
    )
    assert extra["source"] == "unit" and json.loads((tmp_path / "meta.json").read_text()) == extra
    with pytest.raises(BuildError, match="val_docs"):
        build_shards.build_shards(["a"], built["tokenizer"], tmp_path, progress=False, extra_meta={"val_docs": 1})


def test_longest_train_documents_match_a_brute_force_count(built):
    stream = split_stream(built["meta"], built["out"], "train")
    starts = np.flatnonzero(stream == build_shards.BOS_ID)
    lengths = np.diff(np.append(starts, stream.size))
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))[:build_shards.LONGEST_DOCS_KEPT]
    expected = [{"doc_index": NUM_VAL + i, "tokens": int(lengths[i]), "train_token_offset": int(starts[i])}
                for i in order]
    assert built["meta"]["longest_train_docs"] == expected
    assert expected[0]["doc_index"] == NUM_VAL + 7  # the one long document of the corpus


def test_a_document_holding_much_of_the_train_split_is_warned_about(built, tmp_path, capsys):
    docs = ["val doc", *(f"short doc {i}" for i in range(150)), " ".join(["green"] * 400)]
    meta = build_shards.build_shards(docs, built["tokenizer"], tmp_path, val_docs=1, workers=1, progress=False)
    long_doc = meta["longest_train_docs"][0]
    assert long_doc["doc_index"] == 151 and long_doc["tokens"] / meta["train_tokens"] > 0.1
    err = capsys.readouterr().err
    assert f"document 151 (0-based, non-empty documents) holds {long_doc['tokens']:,} tokens" in err
    assert err.count("warning: document") == 1  # the short documents are each well under 1%


def split_documents(stream: np.ndarray) -> list[tuple[int, ...]]:
    starts = np.flatnonzero(stream == build_shards.BOS_ID)
    return [tuple(doc.tolist()) for doc in np.split(stream, starts)[1:]]


def expected_pieces(docs: list[tuple[int, ...]], piece_tokens: int) -> list[tuple[int, ...]]:
    """Brute force: BOS + the first piece_tokens tokens, then BOS + each following piece_tokens tokens."""
    bos = build_shards.BOS_ID
    out = []
    for doc in docs:
        body = doc[1:]
        out += [(bos, *body[i:i + piece_tokens]) for i in range(0, max(len(body), 1), piece_tokens)]
    return out


def build_ordered(built, out: Path, **kwargs) -> dict:
    docs = [json.loads(line)["text"] for line in built["source"].read_text(encoding="utf-8").splitlines()]
    return build_shards.build_shards(docs, built["tokenizer"], out, val_docs=NUM_VAL, shard_tokens=997, workers=1,
                                     progress=False, **kwargs)


def test_shuffled_train_split_is_a_seeded_permutation_of_the_documents(built, tmp_path):
    plain = split_documents(split_stream(built["meta"], built["out"], "train"))
    meta = build_ordered(built, tmp_path / "a", shuffle_seed=7)
    shuffled = split_documents(split_stream(meta, tmp_path / "a", "train"))
    assert sorted(shuffled) == sorted(plain) and shuffled != plain
    assert meta["train_order"] == {"shuffle_seed": 7, "piece_tokens": 0, "pieces": len(plain)}
    assert meta["train_tokens"] == built["meta"]["train_tokens"]
    assert all(s["tokens"] == 997 for s in meta["shards"]["train"][:-1])
    for shard in meta["shards"]["val"]:  # validation stays as read
        assert (tmp_path / "a" / shard["file"]).read_bytes() == (built["out"] / shard["file"]).read_bytes()
    again = build_ordered(built, tmp_path / "b", shuffle_seed=7)
    other = build_ordered(built, tmp_path / "c", shuffle_seed=8)
    files = [s["file"] for s in meta["shards"]["train"]]
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert split_documents(split_stream(other, tmp_path / "c", "train")) != shuffled
    assert not list((tmp_path / "a").glob(".*")) and not list((tmp_path / "a").glob("*.tmp"))


@pytest.mark.parametrize("piece_tokens", [1, 40, 997])
def test_long_documents_are_cut_into_bos_led_pieces(built, tmp_path, piece_tokens):
    plain = split_documents(split_stream(built["meta"], built["out"], "train"))
    meta = build_ordered(built, tmp_path, shuffle_seed=3, piece_tokens=piece_tokens)
    pieces = split_documents(split_stream(meta, tmp_path, "train"))
    want = expected_pieces(plain, piece_tokens)
    assert sorted(pieces) == sorted(want) and meta["train_order"]["pieces"] == len(want)
    assert max(len(p) for p in pieces) <= piece_tokens + 1
    assert meta["train_tokens"] == sum(len(p) for p in want)


def test_pieces_need_a_shuffle_and_a_sane_size(built, tmp_path):
    with pytest.raises(BuildError, match="piece_tokens"):
        build_ordered(built, tmp_path, piece_tokens=100)
    with pytest.raises(BuildError, match="piece_tokens"):
        build_ordered(built, tmp_path, shuffle_seed=1, piece_tokens=-1)


def test_the_long_document_warning_follows_the_train_order(built, tmp_path, capsys):
    docs = ["val doc", *(f"short doc {i}" for i in range(150)), " ".join(["green"] * 400)]
    kwargs = dict(val_docs=1, workers=1, progress=False)
    build_shards.build_shards(docs, built["tokenizer"], tmp_path / "a", shuffle_seed=1, **kwargs)
    assert "shuffled whole, it is still" in capsys.readouterr().err
    build_shards.build_shards(docs, built["tokenizer"], tmp_path / "b", shuffle_seed=1, piece_tokens=8, **kwargs)
    assert "warning" not in capsys.readouterr().err


def test_a_rebuild_removes_the_previous_shards(built, tmp_path):
    for stale in ("fineweb_train_000099.bin", "fineweb_val_000000.bin.tmp"):
        (tmp_path / stale).write_bytes(b"old")
    (tmp_path / "other_train_000000.bin").write_bytes(b"not ours")
    build_shards.build_shards(["a b", "c d"], built["tokenizer"], tmp_path, val_docs=1, workers=1, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fineweb_train_000000.bin", "fineweb_val_000000.bin", "meta.json", "other_train_000000.bin"
    ]


# The subprocess first builds from a small input (2 MB, enough to fill the pipeline) with the same
# settings, so that imports, the worker pool's threads (their cached stacks) and the allocator's
# grown heap belong to the baseline. Then it caps its data segment (RLIMIT_DATA, inherited by the
# spawned workers) at CAP bytes above that baseline and builds from an input ten times CAP: memory
# must not grow with the input. Submitting batches without a bound (what Pool.imap's feeder
# thread does) fails here with MemoryError; the bounded pipeline passes even with 3 MiB.
MEMORY_HARNESS = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import build_shards

def data_segment_bytes():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

warm_argv, argv, cap = json.loads(sys.argv[2])
build_shards.main(warm_argv)
limit = data_segment_bytes() + cap
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.RLIM_INFINITY))
build_shards.main(argv)
assert "torch" not in sys.modules
"""
CAP = 4 << 20


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc and relies on Linux RLIMIT_DATA accounting")
def test_streaming_build_of_an_input_ten_times_the_memory_cap(built, tmp_path):
    rng = random.Random(5)
    pool = [json.dumps({"text": " ".join(rng.choices(WORDS, k=400))}, ensure_ascii=False) + "\n" for _ in range(200)]
    chunk = "".join(pool).encode()
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        for _ in range(10 * CAP // len(chunk) + 1):
            f.write(chunk)
    small = tmp_path / "small.jsonl"
    small.write_bytes(chunk * 4)
    common = ["--tokenizer", str(built["tokenizer"]), "--val-docs", "10", "--shard-tokens", "500000",
              "--workers", "2", "--no-progress"]
    warm_argv = ["--input", str(small), "--output-dir", str(tmp_path / "warm"), *common]
    argv = ["--input", str(big), "--output-dir", str(tmp_path / "big_out"), *common]

    result = subprocess.run(
        [sys.executable, "-c", MEMORY_HARNESS, str(SCRIPT.parent), json.dumps([warm_argv, argv, CAP])],
        capture_output=True, text=True, timeout=180,
    )

    assert result.returncode == 0, result.stderr[-3000:]
    meta = json.loads((tmp_path / "big_out" / "meta.json").read_text())
    assert big.stat().st_size >= 10 * CAP
    assert meta["val_docs"] + meta["train_docs"] == big.stat().st_size // len(chunk) * len(pool)

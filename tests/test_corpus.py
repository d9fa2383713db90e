"""Byte accounting on real English text: a sample of ../shared/corpus (skipped when the file is absent)."""
import itertools
import json
import lzma
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

import build_shards
import train_gpt as tg
from conftest import TINY

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "debian_docs.jsonl.xz"


@pytest.mark.skipif(not CORPUS.exists(), reason=f"{CORPUS} is not on this machine")
def test_eval_byte_count_equals_utf8_bytes_of_decoded_validation_text(tmp_path):
    with lzma.open(CORPUS, "rt", encoding="utf-8") as f:
        docs = [json.loads(line)["text"] for line in itertools.islice(f, 400)]
    tokenizer = build_shards.train_tokenizer(docs[100:], tmp_path / "tok.model", vocab_size=2048)
    build_shards.build_shards(iter(docs), tokenizer, tmp_path / "shards", val_docs=100, workers=1, progress=False)
    val = tg.load_val_tokens(str(tmp_path / "shards" / "fineweb_val_*.bin"), torch.device("cpu"))
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    decoded = [sp.decode(sp.encode(doc)) for doc in docs[:100] if doc.strip()]
    assert any(not d.isascii() for d in decoded)  # real text: multi-byte characters, byte-fallback pieces
    cfg = tg.load_config(TINY + ["model.vocab_size=2048"])
    model = tg.GPT(cfg.model)
    tables = tg.build_byte_tables(str(tokenizer), 2048, "cpu")
    result = tg.eval_windows(model, val, tables, tg.sliding_windows(len(val) - 1, 512, 512), 8, tg.Dist(0, 1, 0, torch.device("cpu")))
    assert result["tokens"] == len(val) - 1
    assert result["bytes"] == sum(len(d.encode("utf-8")) for d in decoded)

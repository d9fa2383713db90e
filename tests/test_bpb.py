"""Exact bits per byte: byte tables from SentencePiece pieces, and the eval against a brute-force computation."""
import math

import pytest
import sentencepiece as spm
import torch

import train_gpt as tg
from conftest import TINY

DOCS = ["the quick brown fox jumps over the lazy dog", "café naïve déjà vu", "prices rose 12.5% in 2024",
        "über-long words and ✓ marks 🙂", "a  b", "日本語のテキスト", "x"]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("sp") / "tiny.model"
    text = ["the quick brown fox jumps over the lazy dog and the cat"] * 50 + ["café rose prices words"] * 20
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text), model_prefix=str(path)[:-6], model_type="bpe",
                                   vocab_size=300, byte_fallback=True, split_digits=True, add_dummy_prefix=False,
                                   normalization_rule_name="nmt_nfkc", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                   character_coverage=1.0, minloglevel=2)
    return str(path)


def stream(sp, docs):
    ids = []
    for doc in docs:
        ids += [tg.BOS_ID] + sp.encode(doc)
    return torch.tensor(ids)


def test_byte_count_equals_utf8_length_of_decoded_text(sp_model):
    """Spaces, byte-fallback pieces (characters missing from the vocabulary) and BOS between documents."""
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    tokens = stream(sp, DOCS)
    pieces = [sp.id_to_piece(int(i)) for i in tokens]
    assert any(p.startswith("<0x") for p in pieces) and any(p.startswith("\u2581") for p in pieces)
    tables = tg.build_byte_tables(sp_model, 300, "cpu")
    counted = tg.target_bytes(tables, tokens[:-1], tokens[1:]).sum().item()
    assert counted == sum(len(sp.decode(sp.encode(d)).encode("utf-8")) for d in DOCS)
    assert all(sp.decode(sp.encode(d)) == d.replace("  ", " ") for d in DOCS)  # nmt_nfkc folds the double space


def test_known_published_bug_would_be_caught(sp_model):
    """Counting <0xNN> as its 6 characters, or the space twice, changes the byte count."""
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    tokens = stream(sp, DOCS)
    base, space, boundary = tg.build_byte_tables(sp_model, 300, "cpu")
    wrong = sum(len(sp.id_to_piece(int(t)).replace("\u2581", " ").encode()) for t in tokens[1:] if not boundary[t])
    assert wrong != tg.target_bytes((base, space, boundary), tokens[:-1], tokens[1:]).sum().item()


def test_eval_plain_equals_brute_force(sp_model):
    sp = spm.SentencePieceProcessor(model_file=sp_model)
    tokens = stream(sp, DOCS * 3)
    cfg = tg.load_config(TINY + ["model.vocab_size=300"])
    torch.manual_seed(0)
    model = tg.GPT(cfg.model)
    torch.nn.init.normal_(model.blocks[0].mlp.proj.weight, std=0.5)  # a model that predicts something
    tables = tg.build_byte_tables(sp_model, 300, "cpu")
    d = tg.Dist(0, 1, 0, torch.device("cpu"))
    result = tg.eval_windows(model, tokens, tables, tg.sliding_windows(len(tokens) - 1, 16, 16), batch_seqs=3, d=d)
    # Brute force: one window at a time, float64 log-softmax per target, bytes from decoding each document.
    nats = 0.0
    for start in range(0, len(tokens) - 1, 16):
        window = tokens[start:start + 17]
        with torch.no_grad():
            logp = torch.log_softmax(model(window[None, :-1])[0].double(), -1)
        nats -= logp.gather(1, window[1:, None]).sum().item()
    nbytes = sum(len(d.encode("utf-8")) for d in [sp.decode(sp.encode(x)) for x in DOCS * 3])
    assert result["tokens"] == len(tokens) - 1 and result["bytes"] == nbytes
    assert math.isclose(result["val_bpb"], nats / math.log(2) / nbytes, rel_tol=1e-6)
    assert math.isclose(result["val_loss"], nats / (len(tokens) - 1), rel_tol=1e-6)

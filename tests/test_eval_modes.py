"""Sliding-window and stateful evaluation against the plain eval and against one long forward pass."""
import math

import pytest
import torch

import train_gpt as tg
from conftest import TINY

D = tg.Dist(0, 1, 0, torch.device("cpu"))


@pytest.fixture(scope="module")
def model_and_tables(synthetic_data):
    cfg = tg.load_config(TINY + synthetic_data["overrides"])
    torch.manual_seed(0)
    model = tg.GPT(cfg.model)
    for block in model.blocks:  # untrained but not trivial: the output projections carry signal
        torch.nn.init.normal_(block.mixer.o_proj.weight, std=0.05)
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.05)
    model.eval()
    tables = tg.build_byte_tables(str(synthetic_data["tokenizer"]), cfg.model.vocab_size, "cpu")
    tokens = tg.load_val_tokens(cfg.data.val_files, torch.device("cpu"))[:3000]
    return model, tables, tokens


def test_sliding_with_stride_seq_len_equals_plain(model_and_tables):
    model, tables, tokens = model_and_tables
    n = len(tokens) - 1
    assert tg.sliding_windows(n, 128, 128) == [(s, min(128, n - s), 0) for s in range(0, n, 128)]  # plain
    plain = tg.eval_windows(model, tokens, tables, tg.sliding_windows(n, 128, 128), 8, D)
    sliding = tg.eval_windows(model, tokens, tables, tg.sliding_windows(n, 128, 128), 5, D)
    assert plain["tokens"] == sliding["tokens"] == n and plain["bytes"] == sliding["bytes"]
    assert math.isclose(plain["val_loss"], sliding["val_loss"], rel_tol=1e-6)


@pytest.mark.parametrize("stride", [1, 16, 50, 127])
def test_smaller_stride_scores_every_target_exactly_once(model_and_tables, stride):
    n, seq_len = 999, 128
    scored = torch.zeros(n, dtype=torch.long)
    for start, length, first in tg.sliding_windows(n, seq_len, stride):
        assert length <= seq_len and (start == 0 or first >= seq_len - stride or start + length == n)
        scored[start + first:start + length] += 1
    assert torch.equal(scored, torch.ones(n, dtype=torch.long))


def test_sliding_eval_has_plain_byte_count_and_more_context(model_and_tables):
    model, tables, tokens = model_and_tables
    n = len(tokens) - 1
    plain = tg.eval_windows(model, tokens, tables, tg.sliding_windows(n, 128, 128), 8, D)
    sliding = tg.eval_windows(model, tokens, tables, tg.sliding_windows(n, 128, 32), 8, D)
    assert sliding["tokens"] == plain["tokens"] and sliding["bytes"] == plain["bytes"]
    assert sliding["val_loss"] != plain["val_loss"]


def test_stateful_on_one_window_equals_plain(model_and_tables):
    """A single document shorter than the window: the stateful eval is exactly the plain forward."""
    model, tables, tokens = model_and_tables
    doc = tokens[:100].clone()
    doc[1:][doc[1:] == tg.BOS_ID] = 5  # one document: no BOS after the first token
    plain = tg.eval_windows(model, doc, tables, tg.sliding_windows(len(doc) - 1, 128, 128), 4, D)
    stateful = tg.eval_stateful(model, doc, tables, 128, 128, 4, tg.BOS_ID, D)
    assert stateful["tokens"] == plain["tokens"] and stateful["bytes"] == plain["bytes"]
    assert math.isclose(stateful["val_loss"], plain["val_loss"], rel_tol=1e-6)


def test_stateful_windows_equal_one_long_forward_pass(model_and_tables):
    """A document read in 4 windows of 64 with carried state equals one forward pass over all 256 tokens
    (the attention window covers the whole document, so nothing is cut)."""
    model, tables, tokens = model_and_tables
    doc = tokens[:257].clone()
    doc[1:][doc[1:] == tg.BOS_ID] = 5
    stateful = tg.eval_stateful(model, doc, tables, 64, 1024, 2, tg.BOS_ID, D)
    with torch.no_grad():
        losses = model(doc[None, :-1], doc[None, 1:], reduction="none")
    assert stateful["tokens"] == 256
    assert math.isclose(stateful["val_loss"], losses.double().mean().item(), rel_tol=1e-5)
    windowed = tg.eval_windows(model, doc, tables, tg.sliding_windows(256, 64, 64), 4, D)
    assert abs(windowed["val_loss"] - stateful["val_loss"]) > 1e-4  # carrying state is not a no-op


def test_stateful_resets_at_document_boundaries(model_and_tables):
    """Two documents in one stream score the same as each document evaluated on its own."""
    model, tables, tokens = model_and_tables
    a, b = tokens[:90].clone(), tokens[200:330].clone()
    for doc in (a, b):
        doc[0] = tg.BOS_ID
        doc[1:][doc[1:] == tg.BOS_ID] = 5
    both = tg.eval_stateful(model, torch.cat([a, b]), tables, 32, 32, 3, tg.BOS_ID, D)
    alone_a = tg.eval_stateful(model, torch.cat([a, b[:1]]), tables, 32, 32, 3, tg.BOS_ID, D)
    alone_b = tg.eval_stateful(model, b, tables, 32, 32, 3, tg.BOS_ID, D)
    total = alone_a["val_loss"] * alone_a["tokens"] + alone_b["val_loss"] * alone_b["tokens"]
    assert both["tokens"] == alone_a["tokens"] + alone_b["tokens"]
    assert math.isclose(both["val_loss"] * both["tokens"], total, rel_tol=1e-6)


@pytest.mark.parametrize("kv_window", [1, 2, 40])
def test_stateful_carries_at_most_kv_window_minus_one_past_keys(model_and_tables, kv_window):
    """The attention state between windows holds the last kv_window - 1 keys, values and valid flags (the next window's
    first token sees those and itself): kv_window = 1 carries none (it used to keep everything, growing each window)."""
    model, tables, tokens = model_and_tables
    doc = tokens[:161].clone()
    doc[1:][doc[1:] == tg.BOS_ID] = 5
    carried, forward = [], model.forward

    def spy(*args, state=None, **kwargs):
        carried.extend({t.shape[-2] if t.dim() == 4 else t.shape[1] for t in s} for s in state or [] if len(s) == 3)
        return forward(*args, state=state, **kwargs)

    model.forward = spy
    try:
        tg.eval_stateful(model, doc, tables, 32, kv_window, 1, tg.BOS_ID, D)
    finally:
        del model.forward
    assert len(carried) == 4 * 2  # windows 2..5, two attention layers
    assert all(sizes == {min(kv_window - 1, 32 * (1 + i // 2))} for i, sizes in enumerate(carried)), carried

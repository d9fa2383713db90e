"""Shard reader checks and the distributed loader's world-size independence."""
import hashlib
import json
import re

import numpy as np
import pytest
import torch

import train_gpt as tg


def write_shard(path, tokens, magic=tg.SHARD_MAGIC, version=tg.SHARD_VERSION, count=None):
    header = np.zeros(256, "<i4")
    header[:3] = magic, version, len(tokens) if count is None else count
    path.write_bytes(header.tobytes() + np.asarray(tokens, "<u2").tobytes())
    return str(path)


def test_good_shard_reads(tmp_path):
    path = write_shard(tmp_path / "ok.bin", [5, 6, 7])
    assert tg.read_shard_header(path) == 3
    assert list(tg.TokenStream(str(tmp_path / "*.bin")).read(1, 4)) == [6, 7, 5, 6]  # wraps around


@pytest.mark.parametrize("kind,message", [("magic", "bad magic"), ("version", "unsupported version"),
                                          ("truncated", "truncated or corrupt"), ("tiny", "truncated")])
def test_bad_shards_are_rejected_naming_the_file(tmp_path, kind, message):
    path = tmp_path / f"{kind}.bin"
    if kind == "magic":
        write_shard(path, [1, 2], magic=1234)
    elif kind == "version":
        write_shard(path, [1, 2], version=2)
    elif kind == "truncated":
        write_shard(path, [1, 2, 3], count=10)
    else:
        path.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match=message) as err:
        tg.read_shard_header(str(path))
    assert str(path) in str(err.value)


def test_missing_shards_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards match"):
        tg.TokenStream(str(tmp_path / "nothing_*.bin"))


def test_loader_union_over_ranks_is_independent_of_world_size(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(1, 3001) % 65000)
    cfg = tg.TrainConfig(seq_len=16, global_batch_tokens=16 * 8, micro_batch_seqs=2)
    pattern = str(tmp_path / "*.bin")

    def step_sequences(world):
        seqs = []
        for rank in range(world):
            loader = tg.TrainLoader(pattern, cfg, tg.Dist(rank, world, rank, torch.device("cpu")))
            loader.next_batch()
            batch = loader.next_batch()  # the second step: positions advance by the global batch
            assert loader.accum_steps == 8 // (2 * world)
            for x, y in batch:
                assert torch.equal(x[:, 1:], y[:, :-1])
                seqs += [tuple(r.tolist()) for r in x]
        return sorted(seqs)

    one = step_sequences(1)
    assert len(one) == 8 and len(set(one)) == 8 and one[0][0] == 16 * 8 + 1
    assert step_sequences(2) == one == step_sequences(4)


def test_loader_rejects_indivisible_batch(tmp_path):
    write_shard(tmp_path / "a.bin", np.arange(1, 300))
    cfg = tg.TrainConfig(seq_len=16, global_batch_tokens=16 * 6, micro_batch_seqs=4)
    with pytest.raises(ValueError, match="micro_batch_seqs"):
        tg.TrainLoader(str(tmp_path / "*.bin"), cfg, tg.Dist(0, 1, 0, torch.device("cpu")))


def test_token_ids_beyond_the_vocabulary_name_the_shard_and_position(tmp_path):
    """A shard built with another tokenizer: the id would index past the embedding (a device assert on CUDA)."""
    write_shard(tmp_path / "a.bin", [1, 5, 6])
    bad = write_shard(tmp_path / "b.bin", [1, 7, 9000, 8])
    stream = tg.TokenStream(str(tmp_path / "*.bin"), vocab_size=8192)
    assert list(stream.read(0, 4)) == [1, 5, 6, 1]  # reads that stay below the bad id pass
    with pytest.raises(ValueError, match=re.escape(f"shard {bad}: token id 9000 at token 2 >= model.vocab_size=8192")):
        stream.read(2, 4)
    with pytest.raises(ValueError, match=re.escape(bad)):
        tg.load_val_tokens(str(tmp_path / "*.bin"), torch.device("cpu"), 8192)
    assert tg.load_val_tokens(str(tmp_path / "*.bin"), torch.device("cpu"), 9001).tolist() == [1, 5, 6, 1, 7, 9000, 8]


def test_meta_json_must_name_the_configured_tokenizer(tmp_path):
    """Bits per byte counted with another tokenizer's pieces are wrong, silently: the build's meta.json records the
    tokenizer's sha256, and the trainer checks it."""
    tok, other = tmp_path / "tok.model", tmp_path / "other.model"
    tok.write_bytes(b"tokenizer one")
    other.write_bytes(b"tokenizer two")
    (tmp_path / "meta.json").write_text(json.dumps({"tokenizer_sha256": hashlib.sha256(b"tokenizer one").hexdigest()}))
    data = tg.DataConfig(train_files=str(tmp_path / "train_*.bin"), tokenizer_path=str(tok))
    assert tg.load_data_meta(data)["tokenizer_sha256"]
    with pytest.raises(ValueError, match=f"data.tokenizer_path {re.escape(str(other))} .* is not the tokenizer"):
        tg.load_data_meta(tg.dataclasses.replace(data, tokenizer_path=str(other)))


def test_tokenizer_and_model_vocabulary_must_match(synthetic_data):
    with pytest.raises(ValueError, match="has 8192 pieces; model.vocab_size=9000 must equal it"):
        tg.build_byte_tables(str(synthetic_data["tokenizer"]), 9000, "cpu")
    assert len(tg.build_byte_tables(str(synthetic_data["tokenizer"]), 8192, "cpu")[0]) == 8192


def test_synthetic_reuses_its_tokenizer_only_with_the_settings_it_was_trained_with(tmp_path):
    import synthetic
    from build_shards import BuildError
    tok = tmp_path / "tok" / "t.model"
    build = lambda out, **kw: synthetic.build(tmp_path / out, tok, workers=1, progress=False,
                                              **dict(dict(train_docs=200, val_docs=20, vocab_size=1024, seed=0), **kw))
    assert build("a")["vocab_size"] == 1024
    trained = tok.read_bytes()
    for kw, differ in [(dict(vocab_size=2048), "vocab_size 1024 (requested 2048)"),
                       (dict(seed=7), "seed 0 (requested 7)"), (dict(val_docs=30), "val_docs 20 (requested 30)")]:
        with pytest.raises(BuildError, match=r"t\.model was trained with other settings: " + re.escape(differ)):
            build(f"b{len(differ)}", **kw)
    assert build("c")["vocab_size"] == 1024 and tok.read_bytes() == trained  # the same settings: reused
    tok.write_bytes(trained[:-1])
    with pytest.raises(BuildError, match=r"t\.model is not the file .*t\.settings\.json describes"):
        build("d")
    tok.with_suffix(".settings.json").unlink()
    with pytest.raises(BuildError, match=r"t\.settings\.json, the record of its settings, does not"):
        build("e")
    # A tokenizer from before settings records: adopted when the meta.json of the build that made it names it.
    tok.write_bytes(trained)
    tok.with_suffix(".settings.json").unlink(missing_ok=True)
    with pytest.raises(BuildError, match="the record of its settings, does not"):
        build("c", seed=7)  # the build in c/ used seed 0
    assert build("c")["vocab_size"] == 1024 and tok.read_bytes() == trained
    assert json.loads(tok.with_suffix(".settings.json").read_text())["settings"]["seed"] == 0  # now recorded

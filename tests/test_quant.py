"""GPTQ against round-to-nearest, bit packing, and the artifact round trip."""
import math
import re

import numpy as np
import pytest
import torch

import train_gpt as tg
from conftest import TINY


def rtn(W, bits, clip_k):
    """Round-to-nearest with the same SDClip scales: the baseline GPTQ must beat."""
    maxq, scale = 2 ** (bits - 1) - 1, tg.sdclip_scale(W, bits, clip_k)
    return torch.clamp(torch.round(W / scale[:, None]), -maxq, maxq), scale


def output_error(W, q, scale, X):
    return ((X @ W.T - X @ (q.float() * scale[:, None]).T).norm() / (X @ W.T).norm()).item()


def correlated_inputs(n, dim, seed=0):
    """Activations with a few dominant, correlated directions, the case where GPTQ's error feedback pays."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(dim, dim, generator=gen) * torch.logspace(0, -2, dim)[:, None]
    return torch.randn(n, dim, generator=gen) @ mix


@pytest.mark.parametrize("bits,clip_k", [(6, 15.0), (4, 6.0)])
def test_gptq_beats_rtn_on_a_linear(bits, clip_k):
    torch.manual_seed(0)
    layer = torch.nn.Linear(128, 96, bias=False)
    X = correlated_inputs(2048, 128)
    q, scale = tg.quantize_gptq(layer.weight.data, X.T @ X, bits, clip_k, block=32)
    q_rtn, scale_rtn = rtn(layer.weight.data, bits, clip_k)
    assert torch.equal(scale, scale_rtn) and q.abs().max() <= 2 ** (bits - 1) - 1
    assert output_error(layer.weight.data, q, scale, X) < 0.8 * output_error(layer.weight.data, q_rtn, scale, X)


def test_gptq_beats_rtn_on_a_gdn_projection_with_hooked_hessian():
    """The q projection of a GDN block, with H = X^T X collected by collect_hessians' hooks on real inputs."""
    cfg = tg.load_config(TINY + ["export=int6", "export.keep_float_max_numel=0"])
    torch.manual_seed(0)
    model = tg.GPT(cfg.model)
    for block in model.blocks:
        torch.nn.init.normal_(block.mixer.o_proj.weight, std=0.05)
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.05)
    name = "blocks.1.mixer.q_proj.weight"
    x = torch.randint(0, cfg.model.vocab_size, (8, 64))
    H = tg.collect_hessians(model, [x], [name], tg.Dist(0, 1, 0, torch.device("cpu")))[name]
    inputs = []
    hook = model.blocks[1].mixer.register_forward_pre_hook(lambda m, args: inputs.append(args[0].reshape(-1, 64)))
    model(x)
    hook.remove()
    X = inputs[0].detach()
    assert torch.allclose(H, X.T @ X, rtol=1e-4, atol=1e-4)  # the hook saw exactly the projection's input
    W = model.state_dict()[name]
    q, scale = tg.quantize_gptq(W, H, 6, 15.0, block=16)
    assert output_error(W, q, scale, X) < output_error(W, rtn(W, 6, 15.0)[0], scale, X)


@pytest.mark.parametrize("bits", [2, 5, 6, 7, 8])
def test_bit_packing_round_trips_exactly(bits):
    values = np.random.default_rng(bits).integers(0, 2 ** bits, size=1001).astype(np.uint8)
    packed = tg.pack_bits(values, bits)
    assert len(packed) == math.ceil(1001 * bits / 8)  # really `bits` bits per value
    assert np.array_equal(tg.unpack_bits(packed, bits, 1001), values)


def test_artifact_round_trips_to_the_dequantized_weights():
    cfg = tg.load_config(TINY + ["export=int6", "export.keep_float_max_numel=2000"])
    torch.manual_seed(0)
    model = tg.GPT(cfg.model)
    names = [n for n, spec in tg.quant_plan(model, cfg.export).items() if spec is not None]
    assert "embed.weight" in names and "blocks.0.mixer.A_log" not in names
    x = torch.randint(0, cfg.model.vocab_size, (4, 64))
    hessians = tg.collect_hessians(model, [x], names, tg.Dist(0, 1, 0, torch.device("cpu")))
    quantized = tg.quantize_model(model, hessians, cfg.export)
    assert quantized["embed.weight"][3] == 8 and quantized["blocks.0.mixer.q_proj.weight"][3] == 6
    blob, sizes = tg.build_artifact(quantized, ["lzma", "brotli"])
    assert len(blob) == min(sizes.values()) + 5 and set(sizes) == {"packed+lzma", "packed+brotli", "bytes+lzma", "bytes+brotli"}
    loaded, expected = tg.load_artifact(blob), tg.dequantize(quantized)
    assert loaded.keys() == expected.keys() == model.state_dict().keys()
    assert all(torch.equal(loaded[k], expected[k]) for k in expected)
    with pytest.raises(ValueError, match="not a GDNQ artifact"):
        tg.load_artifact(b"XXXX" + blob[4:])


def test_self_calibration_export_and_the_size_limit_warning(synthetic_data, tmp_path, monkeypatch, capsys):
    """export.calib_source=self calibrates on the model's own samples (nothing read from the train split after the
    clock), and a run over the byte limit says so loudly."""
    monkeypatch.setattr(tg, "ARTIFACT_LIMIT", 1000)
    monkeypatch.setattr(tg, "calibration_batches", None)  # any read of training data for calibration would fail
    res = tg.main(TINY[:-1] + synthetic_data["overrides"] + [
        "export=int6", "export.calib_source=self", "export.calib_seqs=4", "export.calib_seq_len=32",
        "export.compressors=[lzma]", "train.max_steps=3", f"run.log_dir={tmp_path}", "run.run_id=selfcal"])
    out = capsys.readouterr().out
    assert "export_calib_generate_time:" in out and "NOT ELIGIBLE" in out
    assert res["roundtrip_state_exact"] and res["bytes_total"] > 1000
    assert out.strip().splitlines()[-1] == res["final_line"]


@pytest.mark.parametrize("ablation", [[], ["model.gdn_output_gate=false", "model.conv_size=1"],
                                      ["model.gdn_output_gate=false", "model.conv_size=0"]])
def test_only_weights_with_an_input_hessian_are_planned_for_gptq(ablation):
    """With no size floor, the 2-D tensors that are not a matmul's weight (conv taps, skip weights) stay fp16 instead of
    asking GPTQ for a Hessian nobody collects (a KeyError after training, before this check). Without the GDN output
    gate there is no g_proj to plan or to collect a Hessian for."""
    cfg = tg.load_config(TINY + ["export=int6", "export.keep_float_max_numel=0"] + ablation)
    model = tg.GPT(cfg.model)
    plan, sources = tg.quant_plan(model, cfg.export), tg.hessian_sources(model)
    gptq = {n for n, spec in plan.items() if spec is not None}
    assert gptq == set(sources) and plan["skip_weights"] is None
    assert plan.get("blocks.0.mixer.q_conv", "absent") == ("absent" if "model.conv_size=0" in ablation else None)
    assert ("blocks.0.mixer.g_proj.weight" in gptq) == (not ablation)
    x = torch.randint(0, cfg.model.vocab_size, (2, 64))
    quantized = tg.quantize_model(model, tg.collect_hessians(model, [x], sorted(gptq), tg.Dist(0, 1, 0, torch.device("cpu"))), cfg.export)
    assert {n for n, e in quantized.items() if e[0] == "int"} == gptq


def test_group_bits_set_the_bits_of_a_gradient_split_type_or_leaf():
    """export.group_bits: a leaf's entry (gdn.k) wins over its type's (gdn), which wins over export.matrix_bits; the
    embedding keeps export.embed_bits. The artifact stores each tensor at its own bits and round-trips exactly, and
    the same Hessian at 8 bits gives k_proj a smaller error than at 6."""
    cfg = tg.load_config(TINY + ["export=int6", "export.keep_float_max_numel=0", "export.group_bits=[gdn.k:8,gdn:5,attn.o:7]"])
    torch.manual_seed(0)
    model = tg.GPT(cfg.model)
    for p in model.parameters():
        if p.ndim == 2:
            torch.nn.init.normal_(p, std=0.05)
    plan = tg.quant_plan(model, cfg.export)
    attn, gdn = cfg.model.layout.index("A"), cfg.model.layout.index("G")
    expected = {f"blocks.{gdn}.mixer.k_proj.weight": 8, f"blocks.{gdn}.mixer.q_proj.weight": 5,
                f"blocks.{gdn}.mixer.o_proj.weight": 5, f"blocks.{gdn}.mixer.a_proj.weight": 5,
                f"blocks.{attn}.mixer.o_proj.weight": 7, f"blocks.{attn}.mixer.k_proj.weight": 6,
                f"blocks.{gdn}.mlp.fc.weight": 6, "embed.weight": 8}
    assert {name: plan[name][0] for name in expected} == expected
    assert all(plan[n][0] == 8 for n in plan if n.endswith("k_proj.weight") and cfg.model.layout[int(n.split(".")[1])] == "G")
    names = [n for n, spec in plan.items() if spec is not None]
    x = torch.randint(0, cfg.model.vocab_size, (4, 64))
    hessians = tg.collect_hessians(model, [x], names, tg.Dist(0, 1, 0, torch.device("cpu")))
    quantized = tg.quantize_model(model, hessians, cfg.export)
    assert {name: quantized[name][3] for name in expected} == expected
    assert int(quantized[f"blocks.{gdn}.mixer.q_proj.weight"][1].abs().max()) <= 2 ** 4 - 1  # 5 bits: |q| <= 15
    loaded, decoded = tg.load_artifact(tg.build_artifact(quantized, ["lzma"])[0]), tg.dequantize(quantized)
    assert all(torch.equal(loaded[k], decoded[k]) for k in decoded)
    k_name = f"blocks.{gdn}.mixer.k_proj.weight"
    W, H = model.state_dict()[k_name], hessians[k_name]
    err = {bits: (W - q.float() * s[:, None]).norm().item() for bits in (6, 8)
           for q, s in [tg.quantize_gptq(W, H, bits, cfg.export.matrix_clip_k, cfg.export.gptq_block)]}
    assert (decoded[k_name] - W).norm().item() == pytest.approx(err[8], rel=1e-3) and err[8] < 0.5 * err[6]


@pytest.mark.parametrize("items,bad", [("[gdn.x:8]", "gdn.x:8"), ("[gdn.k:9]", "gdn.k:9"), ("[gdn.k]", "gdn.k"),
                                       ("[mlp:5,mlp:6]", "mlp:5"), ("[embed:8]", "embed:8"), ("[gdn.conv:8]", "gdn.conv:8")])
def test_bad_group_bits_are_named_with_the_valid_groups(items, bad):
    with pytest.raises(ValueError, match=rf"config export.group_bits: '{re.escape(bad)}' must be 'group:bits'.*groups: gdn, attn, mlp, gdn.q"):
        tg.load_config(["export=int6", f"export.group_bits={items}"])

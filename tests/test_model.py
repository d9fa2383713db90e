"""Model, optimizer grouping and gradient flow for the three layout presets."""
import re

import pytest
import torch

import train_gpt as tg
from conftest import TINY


def tiny_config(preset: str) -> tg.Config:
    return tg.load_config([f"model={preset}"] + TINY)


@pytest.mark.parametrize("preset,layout,ablation", [
    ("gdn_hybrid", "GGGGAGGGAG", []), ("attention", "A" * 10, []), ("pure_gdn", "G" * 10, []),
    ("gdn_hybrid", "GGGGAGGGAG", ["model.gdn_output_gate=false", "model.conv_size=1"]),  # the GDN ablations
    ("gdn_hybrid_lean", "GGGGAGGGAG", []),  # model.conv_size=0 and model.gdn_output_gate=false
])
def test_presets_forward_backward_every_parameter_gets_gradient(preset, layout, ablation):
    cfg = tg.load_config([f"model={preset}"] + TINY + ablation)
    assert cfg.model.layout == layout
    torch.manual_seed(0)
    model = tg.GPT(cfg.model)
    for block in model.blocks:  # zero-initialised output projections block the gradient to everything before them
        torch.nn.init.normal_(block.mixer.o_proj.weight, std=0.02)
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.02)
    x = torch.randint(0, cfg.model.vocab_size, (2, 40))
    loss = model(x, torch.roll(x, -1, 1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    logits = model(x)
    assert logits.shape == (2, 40, cfg.model.vocab_size) and logits.abs().max() <= cfg.model.logit_softcap


@pytest.mark.parametrize("gate", [True, False])
def test_gdn_norm_weight_folded_into_o_proj_matches_the_norm_then_projection(gate):
    """The output norm's weight scales o_proj's weight, or o_proj's input while o_proj has a hook (GPTQ's calibration
    uses a pre-hook): the output and every gradient equal RMSNorm(o) * weight * gate, then o_proj."""
    cfg = tg.load_config(["model=gdn_hybrid"] + TINY + [f"model.gdn_output_gate={str(gate).lower()}"]).model
    torch.manual_seed(0)
    mixer = tg.GatedDeltaNet(cfg)  # fp32: the mixer computes its norm in fp32
    torch.nn.init.normal_(mixer.o_proj.weight, std=0.1)
    mixer.norm_weight.data.uniform_(0.5, 1.5)
    x = torch.randn(2, 24, cfg.model_dim)
    H, Vh = mixer.H, mixer.Vh

    def unfolded():  # the formula, from the mixer's own core
        o, _, _ = mixer.core(torch.nn.functional.linear(x, torch.cat([mixer.q_proj.weight, mixer.k_proj.weight,
                  mixer.v_proj.weight, mixer.a_proj.weight, mixer.b_proj.weight])), None, False)
        g = torch.nn.functional.silu(mixer.g_proj(x).view(2, 24, H, Vh)) if gate else 1.0
        return mixer.o_proj((tg.rms_norm(o, eps=1e-5) * mixer.norm_weight * g).reshape(2, 24, H * Vh))

    def output_and_grads(fn):
        mixer.zero_grad()
        y = fn()
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        return [y.detach()] + [p.grad.clone() for p in mixer.parameters()]
    seen = []
    hooks = {"none": lambda: None,
             "pre": lambda: mixer.o_proj.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach())),
             "post": lambda: mixer.o_proj.register_forward_hook(lambda m, a, out: seen.append(a[0].detach()))}
    for kind, register in hooks.items():  # without a hook the mixer folds the weight; with one o_proj gets its real input
        hook = register()
        expected = output_and_grads(unfolded)
        for want, got in zip(expected, output_and_grads(lambda: mixer(x)[0]), strict=True):
            assert (got - want).abs().max() <= 1e-5 * want.abs().max(), kind  # fp32 rounding in another order
        if hook:
            hook.remove()
    assert len(seen) == 4  # per hook kind, the unfolded formula's o_proj input and the hooked mixer's: the same
    assert all(torch.allclose(seen[i], seen[i + 1], rtol=1e-6, atol=1e-7) for i in (0, 2))


@pytest.mark.parametrize("gate", [True, False])
def test_gdn_output_is_cast_to_bf16_before_its_heads_are_flattened(gate):
    """torch 2.11's inductor (the lent GPUs') splits the output norm into two passes, one storing rstd and one reading o
    again, when the [B, T, H, V] -> [B, T, H * V] view comes before the bf16 cast (runs BD, PE: scripts/
    inductor_codegen_offline.py under torch 2.11; this CPU's torch 2.13 fuses either order). The traced graph casts
    the norm's 4-D output, then views it."""
    from torch.fx.experimental.proxy_tensor import make_fx
    cfg = tg.load_config(["model=gdn_hybrid"] + TINY + [f"model.gdn_output_gate={str(gate).lower()}"]).model
    mixer, x = tg.GatedDeltaNet(cfg), torch.randn(2, 24, cfg.model_dim, dtype=torch.bfloat16)

    def forward(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return mixer(x)[0]
    graph = make_fx(forward)(x).graph
    tokens_by_heads = 2 * 24 * mixer.H * mixer.Vh
    casts = [n for n in graph.nodes if n.target == torch.ops.aten._to_copy.default and n.kwargs.get("dtype") ==
             torch.bfloat16 and n.args[0].meta["val"].dtype == torch.float32 and n.meta["val"].numel() == tokens_by_heads]
    assert len(casts) == 1, casts  # the norm's output, cast for o_proj
    assert casts[0].meta["val"].shape == (2, 24, mixer.H, mixer.Vh), casts[0].meta["val"].shape


def test_rope_tables_come_from_an_op_so_compiled_attention_evaluates_no_trig_per_element():
    """Inductor fused RoPE's cos and sin into q's and k's kernels, one evaluation per element, forward and backward (run
    OD: the attention model's step 7% slower on an H100). From the rope_table op it reads [n, 1, hd/2] tables."""
    from torch._inductor.utils import run_and_get_code
    cfg = tg.load_config(["model=attention"] + TINY).model
    torch.manual_seed(0)
    attn = tg.Attention(cfg)
    torch.nn.init.normal_(attn.o_proj.weight, std=0.1)
    cos, sin = tg.rope_table(attn.inv_freq, 24)
    angles = torch.arange(24.0)[:, None] * cfg.rope_base ** (-torch.arange(0, attn.hd, 2) / attn.hd)
    assert cos.shape == sin.shape == (24, 1, attn.hd // 2)  # token-major, as q and k are rotated (run PD)
    assert torch.allclose(cos[:, 0], angles.cos(), atol=1e-6) and torch.allclose(sin[:, 0], angles.sin(), atol=1e-6)
    x = torch.randn(2, 24, cfg.model_dim)

    def step(fn):
        attn.zero_grad()
        xg = x.clone().requires_grad_()
        y = fn(xg)[0]
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        return [y.detach(), xg.grad] + [p.grad.clone() for p in attn.parameters()]
    eager = step(attn)
    torch._dynamo.reset()
    compiled, codes = run_and_get_code(lambda: step(torch.compile(attn, fullgraph=True)))
    assert len(codes) == 2  # the forward graph and the backward graph
    trig = [line.strip() for code in codes for line in code.splitlines() if re.search(r"(\.|std::)(cos|sin)\(", line)]
    assert not trig, trig
    for want, got in zip(eager, compiled, strict=True):
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()


@pytest.mark.parametrize("preset", ["gdn_hybrid", "attention"])
def test_residual_stream_dtype_follows_autocast_and_bf16_residual(preset):
    """Under bf16 autocast the residual stream (every block's output, the skips included) is bf16, as in the
    challenge's bf16 models, unless model.bf16_residual=false; without autocast (the CPU path) it stays fp32. The loss
    of the bf16 stream stays within bf16 rounding of the fp32 one."""
    torch.manual_seed(0)
    model = tg.GPT(tiny_config(preset).model)
    for block in model.blocks:
        torch.nn.init.normal_(block.mixer.o_proj.weight, std=0.02)
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.02)
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda mod, args, out: seen.append(out[0].dtype))
    x = torch.randint(0, model.cfg.vocab_size, (2, 40))
    losses = {}
    for bf16_residual, autocast in ((True, False), (True, True), (False, True)):
        model.cfg.bf16_residual, seen[:] = bf16_residual, []
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            losses[bf16_residual, autocast] = model(x, torch.roll(x, -1, 1)).item()
        assert set(seen) == {torch.bfloat16 if bf16_residual and autocast else torch.float32}
    assert abs(losses[True, True] - losses[False, True]) < 2e-2 * losses[False, True]
    assert losses[True, True] != losses[False, True]  # the switch does change the arithmetic


@pytest.mark.parametrize("kernel,fused_mlp,expected", [("torch", True, False), ("fla", True, True), ("fla", False, False)])
def test_set_kernel_switches_the_fused_mlp(kernel, fused_mlp, expected):
    """GPT.set_kernel puts every MLP on the Triton path exactly when the GPU kernels are on and model.fused_mlp is
    true; the torch kernel (the CPU path) never uses it. The fused MLP is checked against torch on the GPU
    (tests/test_gpu.py)."""
    cfg = tg.load_config(["model=gdn_hybrid", f"model.fused_mlp={str(fused_mlp).lower()}"] + TINY)
    model = tg.GPT(cfg.model)
    assert not any(b.mlp.fused for b in model.blocks)
    model.set_kernel(kernel)
    assert [b.mlp.fused for b in model.blocks] == [expected] * len(model.blocks)


def test_optimizer_groups_cover_every_parameter_once():
    cfg = tiny_config("gdn_hybrid")
    model = tg.GPT(cfg.model)
    muon, adam = tg.build_optimizers(model, cfg.train, tg.Dist(0, 1, 0, torch.device("cpu")))
    groups = [list(g["params"]) for opt in (muon, adam) for g in opt.param_groups]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    muon_names = {names[id(p)] for p in muon.param_groups[0]["params"]}
    adam_names = {names[id(p)] for g in adam.param_groups for p in g["params"]}
    assert "blocks.0.mixer.q_conv" in adam_names and "blocks.0.mixer.A_log" in adam_names  # conv taps do train
    assert "blocks.0.mixer.q_proj.weight" in muon_names and "blocks.4.mixer.o_proj.weight" in muon_names
    assert "blocks.0.mixer.a_proj.weight" in adam_names and "embed.weight" in adam_names
    assert all(p.ndim == 2 for p in muon.param_groups[0]["params"])


def test_one_training_step_changes_every_parameter():
    cfg = tiny_config("gdn_hybrid")
    torch.manual_seed(0)
    model = tg.GPT(cfg.model)
    opts = tg.build_optimizers(model, cfg.train, tg.Dist(0, 1, 0, torch.device("cpu")))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(2):  # step 1 moves the zero-initialised projections, step 2 everything behind them
        x = torch.randint(0, cfg.model.vocab_size, (2, 40))
        model(x, torch.roll(x, -1, 1)).backward()
        for opt in opts:
            opt.step()
            opt.zero_grad()
    for n, p in model.named_parameters():
        assert not torch.equal(p, before[n]), n


def test_muon_keeps_one_momentum_buffer_and_allocates_none_after_the_first_step(monkeypatch):
    """Muon's momentum matches m * buf + g accumulated by hand, and steps after the first create no zero buffers
    (a setdefault with a zeros_like default built one per matrix per step: ~60 allocations and fills on the GPU)."""
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4, 8))]
    muon = tg.Muon(params, lr=0.1, momentum=0.9, weight_decay=0.0, ns_steps=5, d=tg.Dist(0, 1, 0, torch.device("cpu")))
    grads = [[torch.randn_like(p) for p in params] for _ in range(3)]
    real_zeros_like, created = torch.zeros_like, []
    monkeypatch.setattr(torch, "zeros_like", lambda *a, **k: created.append(a[0].shape) or real_zeros_like(*a, **k))
    for step, gs in enumerate(grads):
        for p, g in zip(params, gs):
            p.grad = g
        muon.step()
        assert len(created) == 2, f"step {step}: {created}"
    for i, p in enumerate(params):
        expected = 0.9 * (0.9 * grads[0][i] + grads[1][i]) + grads[2][i]
        assert torch.allclose(muon.state[p]["momentum_buffer"], expected, atol=1e-6)


def test_newton_schulz_matches_the_iteration_written_term_by_term():
    """The trainer's iteration puts a X + (b A + c A A) X's sums inside baddbmm (beta, alpha): the same numbers in fp32
    as the terms written out, for a stack, a wide matrix and a tall one (iterated transposed). Swapped beta and alpha,
    or a tall matrix not transposed back, would differ at order 1. The result is contiguous: with more than one rank,
    Muon broadcasts each update's storage, and a tall update left in its transposed layout arrived transposed on the
    other ranks (tests/test_train.py's two ranks against one caught that in this form's first version)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    torch.manual_seed(0)
    for G in (torch.randn(3, 32, 48), torch.randn(24, 40), torch.randn(40, 24), torch.randn(2, 40, 24)):
        X = G.mT if G.size(-2) > G.size(-1) else G
        X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
        for _ in range(5):
            A = X @ X.mT
            X = a * X + (b * A + c * A @ A) @ X
        expected = X.mT if G.size(-2) > G.size(-1) else X
        got = tg.newton_schulz(G, 5)
        assert got.shape == G.shape and torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (G.shape, (got - expected).abs().max())
        assert got.is_contiguous(), G.shape  # Muon broadcasts an update's storage: a transposed one arrives transposed


def test_newton_schulz_orthogonalises():
    G = torch.randn(64, 32)
    X = tg.newton_schulz(G, 5)
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.5 and s.max() < 1.3  # the quintic iteration lands near 1, not exactly on it

"""The plain-torch Gated DeltaNet path against a token-by-token reference recurrence (float64)."""
import pytest
import torch

import train_gpt as tg


def reference_recurrence(q, k, v, g, beta, scale, S0):
    """S_t = exp(g_t) (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T;  o_t = scale * S_t^T q_t (GVA by repeat)."""
    H, HV = q.shape[2], v.shape[2]
    q, k = q.repeat_interleave(HV // H, 2), k.repeat_interleave(HV // H, 2)
    S, outs = S0, []
    for t in range(q.shape[1]):
        kt, qt = k[:, t], q[:, t]
        S = S * g[:, t].exp()[..., None, None]
        S = S - beta[:, t][..., None, None] * kt[..., :, None] * (kt[..., None, :] @ S)
        S = S + beta[:, t][..., None, None] * kt[..., :, None] * v[:, t][..., None, :]
        outs.append(scale * (qt[..., None, :] @ S).squeeze(-2))
    return torch.stack(outs, 1), S


def random_inputs(T, H=2, HV=2, K=8, V=6, B=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    f = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k = tg.l2_normalize(f(B, T, H, K)), tg.l2_normalize(f(B, T, H, K))
    g = -torch.rand(B, T, HV, generator=gen, dtype=torch.float64) * 0.7
    beta = torch.rand(B, T, HV, generator=gen, dtype=torch.float64)
    return [x.requires_grad_() for x in (q, k, f(B, T, HV, V), g, beta, f(B, HV, K, V))]


@pytest.mark.parametrize("T,chunk,HV", [(32, 16, 2), (45, 16, 2), (7, 16, 2), (50, 32, 4)])
def test_chunked_matches_recurrence_outputs_state_and_grads(T, chunk, HV):
    """Lengths that are and are not multiples of the chunk, and grouped value heads (HV > H)."""
    inputs = random_inputs(T, HV=HV)
    o_ref, S_ref = reference_recurrence(*inputs[:5], 0.3, inputs[5])
    o, S = tg.gated_delta_rule_torch(*inputs[:5], 0.3, inputs[5], chunk_size=chunk)
    assert torch.allclose(o.double(), o_ref, atol=2e-5) and torch.allclose(S.double(), S_ref, atol=2e-5)
    weights = torch.randn_like(o_ref), torch.randn_like(S_ref)
    grads_ref = torch.autograd.grad((o_ref * weights[0]).sum() + (S_ref * weights[1]).sum(), inputs)
    grads = torch.autograd.grad((o.double() * weights[0]).sum() + (S.double() * weights[1]).sum(), inputs)
    for name, a, b in zip(["q", "k", "v", "g", "beta", "initial_state"], grads, grads_ref):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
    assert grads[5].abs().sum() > 0  # the gradient really reaches the initial state


def test_chunked_is_chunk_size_invariant():
    inputs = [x.detach() for x in random_inputs(70)]
    a = tg.gated_delta_rule_torch(*inputs[:5], 0.3, inputs[5], chunk_size=16)
    b = tg.gated_delta_rule_torch(*inputs[:5], 0.3, inputs[5], chunk_size=64)
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)


def test_causal_conv_matches_conv1d_and_carries_state():
    x, w = torch.randn(2, 30, 6), torch.randn(6, 4)
    full, _ = tg.causal_conv(x, w, None)
    reference = torch.nn.functional.conv1d(torch.nn.functional.pad(x.transpose(1, 2), (3, 0)), w[:, None], groups=6)
    assert torch.allclose(full, torch.nn.functional.silu(reference).transpose(1, 2), atol=1e-6)
    first, state = tg.causal_conv(x[:, :11], w, None)
    second, _ = tg.causal_conv(x[:, 11:], w, state)
    assert torch.allclose(torch.cat([first, second], 1), full, atol=1e-6)
    one, state1 = tg.causal_conv(x[:, :1], w, state)  # fewer new tokens than the kernel width
    assert torch.equal(state1[..., -1], x[:, 0]) and torch.equal(state1[..., :-1], state[..., 1:])


def test_gdn_module_state_carry_equals_one_pass():
    cfg = tg.ModelConfig(model_dim=32, gdn_heads=2, gdn_head_dim=16, gdn_expand_v=2.0, chunk_size=16)
    torch.manual_seed(0)
    gdn = tg.GatedDeltaNet(cfg)
    torch.nn.init.normal_(gdn.o_proj.weight)
    x = torch.randn(2, 50, 32)
    full, _ = gdn(x)
    a, state = gdn(x[:, :21], want_state=True)
    b, _ = gdn(x[:, 21:], state=state)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-5)


SHARED_QK = ("q_proj", "k_proj", "q_conv", "k_conv")


@pytest.mark.parametrize("conv_size,gate", [(4, True), (0, False)])
def test_grouped_value_heads_equal_a_layer_with_each_q_and_k_head_repeated(conv_size, gate):
    """model.gdn_v_heads (GVA, as Qwen3.5's linear layers; FLA's kernels map value head i to q, k head i // (HV / H)):
    2 q and k heads serving 4 value heads equal a 4-head layer whose q and k projections and short-conv taps repeat
    each head twice: the output, the carried state, and every gradient (a shared row's is its group's sum)."""
    base = dict(model_dim=32, gdn_head_dim=8, chunk_size=16, conv_size=conv_size, gdn_output_gate=gate)
    torch.manual_seed(0)
    gva = tg.GatedDeltaNet(tg.ModelConfig(gdn_heads=2, gdn_v_heads=4, **base))
    torch.nn.init.normal_(gva.o_proj.weight)
    wide = tg.GatedDeltaNet(tg.ModelConfig(gdn_heads=4, **base))
    shared = lambda n: n.split(".")[0] in SHARED_QK  # noqa: E731
    wide.load_state_dict({n: t.view(2, 8, *t.shape[1:]).repeat_interleave(2, 0).flatten(0, 1) if shared(n) else t
                          for n, t in gva.state_dict().items()})
    assert gva.q_proj.weight.shape == (16, 32) and gva.v_proj.weight.shape == gva.o_proj.weight.T.shape == (32, 32)
    assert gva.A_log.shape == gva.a_proj.weight.shape[:1] == (4,)
    x = torch.randn(2, 40, 32)
    y, _ = gva(x)
    y_wide, _ = wide(x)
    assert torch.allclose(y, y_wide, atol=1e-5)
    y.square().sum().backward()
    y_wide.square().sum().backward()
    wide_grads = {n: p.grad for n, p in wide.named_parameters()}
    for name, p in gva.named_parameters():
        g = wide_grads[name]
        expected = g.view(2, 2, 8, *g.shape[1:]).sum(1).flatten(0, 1) if shared(name) else g
        assert (p.grad - expected).abs().max() <= 1e-5 * expected.abs().max(), name  # fp32 sums in another order
    with torch.no_grad():
        a, (conv_state, S) = gva(x[:, :13], want_state=True)
        b, _ = gva(x[:, 13:], state=(conv_state, S))
    assert S.shape == (2, 4, 8, 8) and conv_state.shape == (2, 2 * 16 + 32, conv_size)
    assert torch.allclose(torch.cat([a, b], 1), y, atol=1e-5)


def test_conv_size_1_has_no_temporal_mixing():
    """model.conv_size=1 (the short-conv ablation): each of q|k|v is SiLU of a per-channel scale of the same position,
    and q, k are still L2-normalised per head."""
    x, w = torch.randn(2, 9, 3 * 2 * 8), torch.randn(3 * 2 * 8, 1)
    q, k, v, state = tg.short_conv_qkv(x, w, None, (2, 8, 8))
    y = torch.nn.functional.silu(x * w[:, 0])
    assert torch.allclose(v, y[..., 32:].reshape(2, 9, 2, 8), atol=1e-6)
    assert torch.allclose(q, tg.l2_normalize(y[..., :16].reshape(2, 9, 2, 8)), atol=1e-6)
    assert torch.allclose(k, tg.l2_normalize(y[..., 16:32].reshape(2, 9, 2, 8)), atol=1e-6)
    assert state.shape == (2, 48, 1) and torch.equal(state[..., 0], x[:, -1])


def test_conv_size_0_is_silu_only_and_has_no_conv_parameters():
    """model.conv_size=0 (no short conv, FLA's use_short_conv=False): q|k|v = SiLU of the projection (q, k L2-normalised
    per head), the module has no conv parameters, its carried conv state is empty, and the state carry equals one pass."""
    x = torch.randn(2, 9, 3 * 2 * 8)
    q, k, v, state = tg.short_conv_qkv(x, torch.empty(48, 0), None, (2, 8, 8))
    y = torch.nn.functional.silu(x)
    assert torch.equal(v, y[..., 32:].reshape(2, 9, 2, 8)) and state.shape == (2, 48, 0)
    assert torch.allclose(q, tg.l2_normalize(y[..., :16].reshape(2, 9, 2, 8)), atol=1e-6)
    assert torch.allclose(k, tg.l2_normalize(y[..., 16:32].reshape(2, 9, 2, 8)), atol=1e-6)
    cfg = tg.ModelConfig(model_dim=32, gdn_heads=2, gdn_head_dim=16, chunk_size=16, conv_size=0)
    torch.manual_seed(0)
    gdn = tg.GatedDeltaNet(cfg)
    assert gdn.q_conv is None and not [n for n, _ in gdn.named_parameters() if "conv" in n]
    assert gdn.conv_weight().shape == (3 * 32, 0)
    torch.nn.init.normal_(gdn.o_proj.weight)
    x = torch.randn(2, 50, 32)
    full, _ = gdn(x)
    a, (conv_state, S) = gdn(x[:, :21], want_state=True)
    b, _ = gdn(x[:, 21:], state=(conv_state, S))
    assert conv_state.shape == (2, 96, 0) and torch.allclose(torch.cat([a, b], 1), full, atol=1e-5)


@pytest.mark.parametrize("conv_size", [4, 1, 0])
def test_gdn_without_output_gate(conv_size):
    """model.gdn_output_gate=false: no g_proj, and the output is o_proj(RMSNorm(core) * norm_weight), the gated
    module's computation with the gate left out; the state carry still equals one pass."""
    overrides = dict(model_dim=32, gdn_heads=2, gdn_head_dim=16, chunk_size=16, conv_size=conv_size)
    torch.manual_seed(0)
    gated = tg.GatedDeltaNet(tg.ModelConfig(**overrides))
    plain = tg.GatedDeltaNet(tg.ModelConfig(gdn_output_gate=False, **overrides))
    assert plain.g_proj is None and "g_proj.weight" not in dict(plain.named_parameters())
    plain.load_state_dict({n: t for n, t in gated.state_dict().items() if not n.startswith("g_proj")})
    torch.nn.init.normal_(gated.o_proj.weight)
    plain.o_proj.weight.data.copy_(gated.o_proj.weight)
    x = torch.randn(2, 40, 32)
    weight = torch.cat([gated.q_proj.weight, gated.k_proj.weight, gated.v_proj.weight, gated.a_proj.weight,
                        gated.b_proj.weight])
    o = gated.core(torch.nn.functional.linear(x, weight), None, False)[0]
    expected = gated.o_proj((tg.rms_norm(o, eps=1e-5) * gated.norm_weight).flatten(2))
    full, _ = plain(x)
    assert torch.allclose(full, expected, atol=1e-5)
    assert not torch.allclose(gated(x)[0], expected, atol=1e-3)  # the gate does change the output
    a, state = plain(x[:, :13], want_state=True)
    b, _ = plain(x[:, 13:], state=state)
    assert torch.allclose(torch.cat([a, b], 1), full, atol=1e-5)

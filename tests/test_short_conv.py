"""The fused Triton short conv (train_gpt.ShortConv, as an autograd Function: bench.ShortConvFunction) against the plain-torch reference, on CPU through Triton's
interpreter (TRITON_INTERPRET=1, set before Triton is imported, hence a subprocess). The GPU run of the same
comparison in bf16 is tests/test_gpu.py::test_short_conv_kernel_matches_torch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r'''
import json, sys, torch
sys.path.insert(0, ".")
import bench, train_gpt as tg
errors = {}
for B, T, H, K, V, with_state, W in json.loads(sys.argv[1]):
    torch.manual_seed(T)
    D = 2 * H * K + H * V
    x = torch.randn(B, T, D + 7)[..., :D]  # strided rows, as a slice of the fused projection
    w, state = torch.randn(D, W) * 0.5, torch.randn(B, D, W) if with_state else None
    grads = [torch.randn(B, T, H, n) for n in (K, K, V)]
    outs = []
    for fused in (False, True):
        xi, wi = x.detach().clone().requires_grad_(), w.clone().requires_grad_()
        si = None if state is None else state.clone().requires_grad_()
        qkv = bench.ShortConvFunction.apply(xi, wi, si, (H, K, V)) if fused else tg.short_conv_qkv(xi, wi, si, (H, K, V))[:3]
        assert not fused or all(t.is_contiguous() for t in qkv)  # FLA's kernels would copy non-contiguous input
        sum((o * g).sum() for o, g in zip(qkv, grads)).backward()
        leaves = [xi, wi] + ([si] if si is not None else [])  # W = 0: the reference never reads w or the state
        outs.append(list(qkv) + [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves])
    for name, a, b in zip(["q", "k", "v", "dx", "dw", "dstate"], *outs):
        errors[f"{B}x{T} H{H} K{K} V{V} W{W} state={with_state} {name}"] = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # W=1: a state gradient of 0
    # k's gradient in two parts (gdn_core_bwd passes FLA's two dk terms to the kernel unsummed): same results
    part, dx_whole, dx_parts = torch.rand_like(grads[1]), x.new_empty(x.shape), x.new_empty(x.shape)
    whole = tg.ShortConv.backward(x, w, state, (H, K, V), grads, dx_whole, True)
    parts = tg.ShortConv.backward(x, w, state, (H, K, V), [grads[0], grads[1] * part, grads[2]], dx_parts, True,
                                  grads[1] * (1 - part))
    for name, a, b in zip(["dx", "dw", "dstate"], [dx_parts, *parts], [dx_whole, *whole]):
        if b is not None:
            errors[f"{B}x{T} H{H} K{K} V{V} W{W} state={with_state} dk in two parts: {name}"] = ((a - b).norm() / b.norm().clamp_min(1e-30)).item()  # W=1: a state gradient of 0
    # dx into a column slice of a wider tensor, as gdn_core_bwd writes dP (W = 0: the du pass writes it, strided)
    wide = torch.full((B, T, D + 5), 7.0)
    tg.ShortConv.backward(x, w, state, (H, K, V), grads, wide[..., :D], True)
    errors[f"{B}x{T} H{H} K{K} V{V} W{W} state={with_state} dx into a column slice"] = max(
        ((wide[..., :D] - dx_whole).norm() / dx_whole.norm()).item(), float((wide[..., D:] != 7.0).any()))
print(json.dumps(errors))
'''


@pytest.mark.parametrize("cases", [  # B, T, H, K, V, carried state, conv width W
    [[2, 37, 2, 16, 16, False, 4]],           # T not a multiple of the row tile
    [[2, 300, 2, 16, 24, True, 4]],           # several tile groups per sequence, v blocks not head-aligned, carried state
    [[1, 2, 1, 16, 20, True, 4], [3, 70, 1, 32, 32, False, 4]],  # fewer tokens than the conv width; a masked v block
    [[2, 70, 2, 16, 16, True, 1], [1, 37, 1, 16, 24, False, 1], [1, 5, 1, 16, 16, True, 2]],  # model.conv_size 1, 2
    [[2, 70, 2, 16, 24, True, 0], [1, 37, 1, 16, 16, False, 0]],  # model.conv_size=0: no conv, SiLU only (du is dx)
])
def test_short_conv_kernel_matches_torch_in_triton_interpreter(cases):
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHECK, json.dumps(cases)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == sum(10 if c[5] else 8 for c in cases)
    bad = {k: v for k, v in errors.items() if not v < 1e-5}
    assert not bad, bad


GROUPED = r'''
import json, sys, torch
import triton.runtime.autotuner as autotuner
autotuner.Autotuner._bench = lambda self, *args, config=None, **kwargs: [1.0, 1.0, 1.0]  # no GPU timer: the first config
sys.path.insert(0, ".")
import train_gpt as tg
_, chunk_o, _, _, _, wy_fast, _ = tg.fla_kernels()
errors = {}
for B, T, H, G, K, V, C, W in json.loads(sys.argv[1]):
    torch.manual_seed(T)
    HV, NT, r = H * G, -(-T // C), torch.randn
    q, k = (torch.nn.functional.normalize(r(B, T, H, K), dim=-1) for _ in range(2))
    v, v_new, do, dv, w = r(B, T, HV, V), r(B, T, HV, V), r(B, T, HV, V), r(B, T, HV, V), r(B, T, HV, K)
    g, beta, A = -torch.rand(B, T, HV).cumsum(1) * 0.05, torch.rand(B, T, HV), r(B, T, HV, C) * 0.1
    h, dh = r(B, NT, HV, K, V), r(B, NT, HV, K, V)
    # FLA's wrappers (dq, dk summed over each group by ATen) against the kernels launched without the sums
    dq, dk, dw, dg = chunk_o.chunk_bwd_dqkwg(q=q, k=k, v=v_new, w=w, g=g, h=h, dv=dv, do=do, dh=dh, scale=K ** -0.5, chunk_size=C)
    dk2, dv2, dbeta, dg2 = wy_fast.prepare_wy_repr_bwd(k=k, v=v, beta=beta, A=A, dw=dw, du=dv, g=g)
    grouped = tg.fla_grouped_bwd(chunk_o, wy_fast, q, k, v, v_new, beta, g, A, w, h, do, dh, dv, K ** -0.5, C)
    gsum = lambda t: t.view(B, T, H, G, K).sum(3)
    for name, a, b in zip(["dq", "dk", "dw", "dg", "dk2", "dv", "dbeta", "dg2"], grouped, [dq, dk, dw, dg, dk2, dv2, dbeta, dg2]):
        a = gsum(a) if name in ("dq", "dk", "dk2") else a
        errors[f"{B}x{T} H{H} G{G} {name}"] = ((a - b).abs().max() / b.abs().max()).item()
    # the conv's backward: q's and k's gradients per value head, summed as it loads, against them summed beforehand
    D = 2 * H * K + HV * V
    x, cw, state = r(B, T, D + 3)[..., :D], r(D, W) * 0.5, r(B, D, W)
    dx_grouped, dx_summed = x.new_empty(x.shape), x.new_empty(x.shape)
    dims = (H, K, G * V)
    a = tg.ShortConv.backward(x, cw, state, dims, grouped[:2] + (dv2,), dx_grouped, True, grouped[4])
    b = tg.ShortConv.backward(x, cw, state, dims, (gsum(grouped[0]), gsum(grouped[1]), dv2), dx_summed, True, gsum(grouped[4]))
    for name, ga, gb in zip(["dx", "dconv", "dstate"], [dx_grouped, *a], [dx_summed, *b]):
        errors[f"{B}x{T} H{H} G{G} W{W} conv {name}"] = ((ga - gb).norm() / gb.norm().clamp_min(1e-30)).item()  # W=0: 0
print(json.dumps(errors))
'''


@pytest.mark.parametrize("cases", [  # B, T, H, G (value heads per q and k head), K, V, chunk, conv width W
    [[2, 40, 2, 2, 16, 16, 16, 4]],    # a partial last chunk, a conv
    [[1, 33, 1, 4, 16, 32, 16, 0]],    # 4 value heads of another width per q and k head, no conv (du is dx)
])
def test_grouped_value_heads_backward_sums_in_the_conv_as_fla_wrappers_do_in_triton_interpreter(cases):
    """GVA's backward (gdn_core_bwd with gdn_v_heads > gdn_heads): FLA's dqkwg and WY kernels launched without their
    wrappers' ATen group sums, and the short conv's backward summing q's and k's per-value-head gradients as it loads,
    equal the wrappers' outputs and the conv fed the sums. Dropping the sum's loop or misplacing a group fails here."""
    pytest.importorskip("triton")
    pytest.importorskip("fla")
    proc = subprocess.run([sys.executable, "-c", GROUPED, json.dumps(cases)], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1"), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(errors) == 11 * len(cases)
    bad = {k: v for k, v in errors.items() if not v < 1e-6}
    assert not bad, bad

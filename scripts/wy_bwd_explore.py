"""A shorter backward through GDN's WY representation, against FLA's `prepare_wy_repr_bwd` (the largest FLA kernel of
the trainer's step: ~465 us a layer call on an H200, docs/perf.md runs FA-FB).

Inside a chunk, w = A (beta exp2(g) k) and u = A (beta v) with A = (I + L)^-1 and L strictly lower triangular,
L_ij = beta_i k_i.k_j exp2(g_i - g_j). FLA's kernel gets the gradient of L as -A^T dA A^T with dA = dw (beta exp2(g) k)^T
+ du (beta v)^T: four 64x64x64 products in a chain. With d(beta exp2(g) k) = A^T dw and d(beta v) = A^T du, which
both kernels compute anyway, the same gradient is -(A^T dw) w^T - (A^T du) u^T: two products, given the forward's w
and u (the trainer keeps w; u would be kept too, ~100 MB a layer at 98K tokens). Seven products in a chain three deep
instead of nine five deep, and dk stays in registers instead of a store and reload.

    python scripts/wy_bwd_explore.py            # GPU: parity with FLA's kernel, then both timed interleaved

On an H200 (docs/perf.md, twentieth session) it ran 418 us against FLA's 466 and nearer the fp32 reference, but the
trainer's full step with it (and u kept) was no faster beyond the noise between processes, so it stays out of
train_gpt.py. The CPU test (tests/test_wy_bwd_explore.py) runs the kernel in Triton's interpreter against torch autograd."""
import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl


@triton.jit
def wy_bwd_kernel(k, v, beta, g, A, w, u, dw, du, dk, dv, dbeta, dg, T, H: tl.constexpr, K: tl.constexpr,
                  V: tl.constexpr, BT: tl.constexpr):
    """One chunk of one head: [B, T, H, D] tensors, beta and g (log2 units, cumulative in the chunk) [B, T, H]."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    bos, i_h = (i_bh // H).to(tl.int64) * T, i_bh % H
    o_t, o_k, o_v, o_c = i_t * BT + tl.arange(0, BT), tl.arange(0, K), tl.arange(0, V), tl.arange(0, BT)
    m_t = o_t < T
    p_kk = (bos * H + i_h) * K + o_t[:, None] * (H * K) + o_k[None, :]  # [BT, K] offsets into k, w, dw, dk
    p_vv = (bos * H + i_h) * V + o_t[:, None] * (H * V) + o_v[None, :]
    p_t = bos * H + i_h + o_t * H
    m_row, m_L = m_t[:, None], (o_t[:, None] > o_t[None, :]) & m_t[:, None]
    b_b = tl.load(beta + p_t, mask=m_t, other=0.0).to(tl.float32)
    b_g = tl.load(g + p_t, mask=m_t, other=0.0).to(tl.float32)
    b_At = tl.load(A + (bos * H + i_h) * BT + o_c[:, None] + o_t[None, :] * (H * BT), mask=m_t[None, :], other=0.0)
    # Values first (their gradient, dv and their part of dL), so that v, u and du are dead before the keys load.
    b_dvb = tl.dot(b_At, tl.load(du + p_vv, mask=m_row, other=0.0))  # gradient of beta v; At is A transposed
    tl.store(dv + p_vv, (b_dvb * b_b[:, None]).to(dv.dtype.element_ty), mask=m_row)
    b_db = tl.sum(b_dvb * tl.load(v + p_vv, mask=m_row, other=0.0), 1)
    b_u = tl.load(u + p_vv, mask=m_row, other=0.0)
    b_dL = tl.dot(b_dvb.to(b_u.dtype), tl.trans(b_u))
    b_dkbg = tl.dot(b_At, tl.load(dw + p_kk, mask=m_row, other=0.0))  # gradient of beta exp2(g) k
    b_w = tl.load(w + p_kk, mask=m_row, other=0.0)
    b_dL = tl.dot(b_dkbg.to(b_w.dtype), tl.trans(b_w), b_dL)
    b_k = tl.load(k + p_kk, mask=m_row, other=0.0)
    b_eg = tl.exp2(b_g)
    b_s = tl.sum(b_dkbg * b_k, 1)
    b_db, b_dg = b_db + b_s * b_eg, b_s * b_b * b_eg  # dg per natural-log unit of g, as FLA's
    b_dk = b_dkbg * (b_b * b_eg)[:, None]
    b_dL = tl.where(m_L, -b_dL * tl.exp2(b_g[:, None] - b_g[None, :]), 0).to(b_k.dtype)  # gradient of beta_i k_i.k_j
    b_dkb = tl.dot(b_dL, b_k)
    b_db += tl.sum(b_dkb * b_k, 1)
    b_dk = tl.dot(tl.trans(b_dL), (b_k * b_b[:, None]).to(b_k.dtype), b_dk + b_dkb * b_b[:, None])
    tl.store(dk + p_kk, b_dk.to(dk.dtype.element_ty), mask=m_row)
    b_LdL = b_dL * tl.dot(b_k, tl.trans(b_k)) * b_b[:, None]
    b_dg += tl.sum(b_LdL, 1) - tl.sum(b_LdL, 0)
    tl.store(dbeta + p_t, b_db.to(dbeta.dtype.element_ty), mask=m_t)
    tl.store(dg + p_t, b_dg.to(dg.dtype.element_ty), mask=m_t)


@triton.jit
def wy_bwd_split_kernel(k, v, beta, g, A, w, u, dw, du, dk, dv, dbeta, dg, T, H: tl.constexpr, K: tl.constexpr,
                        V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr):
    """wy_bwd_kernel over K and V in BK- and BV-wide slices, fewer registers live: dk's first part goes to memory and
    is read back after the gradient of L is complete (as FLA's kernel does)."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    bos, i_h = (i_bh // H).to(tl.int64) * T, i_bh % H
    o_t, o_c = i_t * BT + tl.arange(0, BT), tl.arange(0, BT)
    m_t, p_t = o_t < T, bos * H + i_h + o_t * H
    m_row, m_L = m_t[:, None], (o_t[:, None] > o_t[None, :]) & m_t[:, None]
    b_b = tl.load(beta + p_t, mask=m_t, other=0.0).to(tl.float32)
    b_g = tl.load(g + p_t, mask=m_t, other=0.0).to(tl.float32)
    b_eg = tl.exp2(b_g)
    b_At = tl.load(A + (bos * H + i_h) * BT + o_c[:, None] + o_t[None, :] * (H * BT), mask=m_t[None, :], other=0.0)
    b_db, b_dg, b_dL = tl.zeros([BT], tl.float32), tl.zeros([BT], tl.float32), tl.zeros([BT, BT], tl.float32)
    for i_v in range(V // BV):
        p_vv = (bos * H + i_h) * V + o_t[:, None] * (H * V) + (i_v * BV + tl.arange(0, BV))[None, :]
        b_dvb = tl.dot(b_At, tl.load(du + p_vv, mask=m_row, other=0.0))
        tl.store(dv + p_vv, (b_dvb * b_b[:, None]).to(dv.dtype.element_ty), mask=m_row)
        b_db += tl.sum(b_dvb * tl.load(v + p_vv, mask=m_row, other=0.0), 1)
        b_u = tl.load(u + p_vv, mask=m_row, other=0.0)
        b_dL = tl.dot(b_dvb.to(b_u.dtype), tl.trans(b_u), b_dL)
    for i_k in range(K // BK):
        p_kk = (bos * H + i_h) * K + o_t[:, None] * (H * K) + (i_k * BK + tl.arange(0, BK))[None, :]
        b_dkbg = tl.dot(b_At, tl.load(dw + p_kk, mask=m_row, other=0.0))
        b_w = tl.load(w + p_kk, mask=m_row, other=0.0)
        b_dL = tl.dot(b_dkbg.to(b_w.dtype), tl.trans(b_w), b_dL)
        b_s = tl.sum(b_dkbg * tl.load(k + p_kk, mask=m_row, other=0.0), 1)
        b_db, b_dg = b_db + b_s * b_eg, b_dg + b_s * b_b * b_eg
        tl.store(dk + p_kk, (b_dkbg * (b_b * b_eg)[:, None]).to(dk.dtype.element_ty), mask=m_row)
    b_dL = tl.where(m_L, -b_dL * tl.exp2(b_g[:, None] - b_g[None, :]), 0).to(b_At.dtype)
    b_kk = tl.zeros([BT, BT], tl.float32)
    tl.debug_barrier()  # dk's first part, stored by other threads of this program, is read back below
    for i_k in range(K // BK):
        p_kk = (bos * H + i_h) * K + o_t[:, None] * (H * K) + (i_k * BK + tl.arange(0, BK))[None, :]
        b_k = tl.load(k + p_kk, mask=m_row, other=0.0)
        b_dkb = tl.dot(b_dL, b_k)
        b_db += tl.sum(b_dkb * b_k, 1)
        b_dk = tl.load(dk + p_kk, mask=m_row, other=0.0).to(tl.float32) + b_dkb * b_b[:, None]
        b_dk = tl.dot(tl.trans(b_dL), (b_k * b_b[:, None]).to(b_k.dtype), b_dk)
        tl.store(dk + p_kk, b_dk.to(dk.dtype.element_ty), mask=m_row)
        b_kk = tl.dot(b_k, tl.trans(b_k), b_kk)
    b_LdL = b_dL * b_kk * b_b[:, None]
    b_dg += tl.sum(b_LdL, 1) - tl.sum(b_LdL, 0)
    tl.store(dbeta + p_t, b_db.to(dbeta.dtype.element_ty), mask=m_t)
    tl.store(dg + p_t, b_dg.to(dg.dtype.element_ty), mask=m_t)


def wy_bwd(k, v, beta, g, A, w, u, dw, du, num_warps: int = 4, split: int = 0):
    """FLA's prepare_wy_repr_bwd(k, v, beta, A, dw, du, g) -> dk, dv, dbeta, dg, from the forward's w and u too.
    split: K and V in slices of this width (wy_bwd_split_kernel); 0: whole."""
    (B, T, H, K), V, BT = k.shape, v.shape[-1], A.shape[-1]
    for name, t in dict(k=k, v=v, beta=beta, g=g, A=A, w=w, u=u, dw=dw, du=du).items():
        if not t.is_contiguous():
            raise ValueError(f"wy_bwd: {name} must be contiguous")
    dk, dv, dbeta, dg = torch.empty_like(k), torch.empty_like(v), torch.empty_like(beta), torch.empty_like(g)
    if split and (K % split or V % split):
        raise ValueError(f"wy_bwd: split={split} must divide K={K} and V={V}")
    grid, args = (triton.cdiv(T, BT), B * H), (k, v, beta, g, A, w, u, dw, du, dk, dv, dbeta, dg, T)
    if split:
        wy_bwd_split_kernel[grid](*args, H=H, K=K, V=V, BT=BT, BK=split, BV=split, num_warps=num_warps)
    else:
        wy_bwd_kernel[grid](*args, H=H, K=K, V=V, BT=BT, num_warps=num_warps)
    return dk, dv, dbeta, dg


def reference(k, v, beta, g, dw, du, BT: int = 64):
    """fp32 torch: A, w, u from k, v, beta, g (log2 units) and, by autograd through the triangular solve, the
    gradients of <w, dw> + <u, du> with respect to k, v, beta and g in natural-log units (FLA's dg)."""
    T = k.shape[1]
    leaves = [t.detach().float().requires_grad_() for t in (k, v, beta, g * 0.6931471805599453)]
    kf, vf, bf, gf = leaves
    N = -(-T // BT)
    pad = lambda t: torch.nn.functional.pad(t, [0, 0] * (t.dim() - 2) + [0, N * BT - T]).unflatten(1, (N, BT))  # noqa: E731
    kc, vc, bc, gc = pad(kf), pad(vf), pad(bf.unsqueeze(-1)).squeeze(-1), pad(gf.unsqueeze(-1)).squeeze(-1)
    kc, vc, bc, gc = kc.transpose(2, 3), vc.transpose(2, 3), bc.transpose(2, 3), gc.transpose(2, 3)  # [B, N, H, BT, .]
    I = torch.eye(BT, device=k.device)  # noqa: E741
    # The decay exp(g_i - g_j) only below the diagonal: above it the exponent can overflow, and inf * 0 in the backward
    # of a mask applied afterwards is nan.
    lower = torch.ones(BT, BT, dtype=torch.bool, device=k.device).tril(-1)
    decay = torch.where(lower, gc.unsqueeze(-1) - gc.unsqueeze(-2), float("-inf")).exp()
    L = bc.unsqueeze(-1) * (kc @ kc.transpose(-1, -2)) * decay
    A = torch.linalg.solve_triangular(I + L, I.expand_as(L), upper=False, unitriangular=True)
    w = A @ (kc * (bc * gc.exp()).unsqueeze(-1))
    u = A @ (vc * bc.unsqueeze(-1))
    unchunk = lambda t: t.transpose(2, 3).flatten(1, 2)[:, :T]  # noqa: E731
    w, u, A = unchunk(w), unchunk(u), unchunk(A)
    loss = (w * dw.float()).sum() + (u * du.float()).sum()
    grads = torch.autograd.grad(loss, leaves)
    return [t.detach() for t in (A, w, u)], grads


def gpu_main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import best_launch, time_launches
    from fla_config_sweep import SHAPES, layer_inputs
    import train_gpt as tg
    wy_fast, summed = tg.fla_kernels()[5], {}
    for B, T in SHAPES:
        x = layer_inputs(B, T)
        fla = lambda: wy_fast.prepare_wy_repr_bwd(k=x["k"], v=x["v"], beta=x["beta"], A=x["A"], dw=x["dw"],  # noqa: E731
                                                  du=x["dv"], g=x["g"])
        ours = {(warps, split): (lambda warps=warps, split=split: wy_bwd(
            x["k"], x["v"], x["beta"], x["g"], x["A"], x["w"], x["u"], x["dw"], x["dv"], num_warps=warps, split=split))
            for warps, split in [(4, 0), (8, 0), (4, 32), (8, 32), (4, 16), (8, 16)]}
        _, exact = reference(x["k"], x["v"], x["beta"], x["g"], x["dw"], x["dv"])  # fp32 from the same bf16 inputs
        for name, fn in [("FLA", fla), *[(f"wy_bwd warps={w} split={sp}", f) for (w, sp), f in ours.items()]]:
            errs = [((o.float() - r).abs().max() / r.abs().max()).item() for o, r in zip(fn(), exact)]
            print(f"{B}x{T} {name}: max |out - fp32 reference| / max |reference| for dk dv dbeta dg: "
                  + " ".join(f"{e:.2e}" for e in errs), flush=True)
        time_launches({"fla": fla, **ours}, args.rounds, f"{B}x{T}", lambda name: "FLA prepare_wy_repr_bwd"
                      if name == "fla" else f"wy_bwd warps={name[0]} split={name[1]}", summed)
    print(best_launch(summed))


if __name__ == "__main__":
    gpu_main()

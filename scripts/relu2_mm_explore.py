"""Exploration behind train_gpt's fused MLP (docs/perf.md, thirteenth session), at the trainer's shape on one GPU
(CUDA events, median of 30): the MLP's ReLU^2 GEMMs in a TMA-descriptor form (persistent over tiles, 1 or 2 programs per SM,
the backward's aux tile loaded before or after the K loop) against cuBLAS alone as the floor; and one-pass softcap
+ cross-entropy kernels (loss and d logits in one read and one write of bf16 logits), which were measured and not
kept.   python scripts/relu2_mm_explore.py"""
import itertools
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import cuda_median_ms  # noqa: E402


def time_ms(fn, reps: int = 30) -> float:
    return cuda_median_ms(fn, reps, warmup=3)


@triton.jit
def relu2_mm_tma(a, b, c, aux, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BACKWARD: tl.constexpr,
                 B_NK: tl.constexpr, PROGRAMS: tl.constexpr, WS: tl.constexpr, FLATTEN: tl.constexpr,
                 PREFETCH: tl.constexpr = False):
    a_d = tl.make_tensor_descriptor(a, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
    if B_NK:
        b_d = tl.make_tensor_descriptor(b, shape=[N, K], strides=[K, 1], block_shape=[BN, BK])
    else:
        b_d = tl.make_tensor_descriptor(b, shape=[K, N], strides=[N, 1], block_shape=[BK, BN])
    c_d = tl.make_tensor_descriptor(c, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
    x_d = tl.make_tensor_descriptor(aux, shape=[M, N], strides=[N, 1], block_shape=[BM, BN])
    n_n = tl.cdiv(N, BN)
    for tile in tl.range(tl.program_id(0), tl.cdiv(M, BM) * n_n, PROGRAMS, flatten=FLATTEN, warp_specialize=WS):
        i_m, i_n = tile // n_n, tile % n_n
        acc = tl.zeros((BM, BN), tl.float32)
        if BACKWARD and PREFETCH:
            r = x_d.load([i_m * BM, i_n * BN])
        for k0 in range(0, K, BK):
            x = a_d.load([i_m * BM, k0])
            w = b_d.load([i_n * BN, k0]).T if B_NK else b_d.load([k0, i_n * BN])
            acc = tl.dot(x, w, acc)
        if BACKWARD:
            if not PREFETCH:
                r = x_d.load([i_m * BM, i_n * BN])
            acc = acc * 2 * tl.sqrt(r.to(tl.float32))
        else:
            acc = tl.maximum(acc, 0.0) * tl.maximum(acc, 0.0)
        c_d.store([i_m * BM, i_n * BN], acc.to(tl.bfloat16))


@triton.jit
def softcap_ce_loop(z, targets, loss, V, cap, BV: tl.constexpr):
    """Online logsumexp over BV-wide tiles, then a second pass (from L2) writing d loss / d z over z."""
    row, cols = tl.program_id(0).to(tl.int64), tl.arange(0, BV)
    z, target = z + row * V, tl.load(targets + row)
    m, s = tl.zeros((), tl.float32) - float("inf"), tl.zeros((), tl.float32)
    for v0 in range(0, V, BV):
        c = cap * (2 * tl.sigmoid(2 * tl.load(z + v0 + cols, mask=v0 + cols < V, other=0.0).to(tl.float32) / cap) - 1)
        m_new = tl.maximum(m, tl.max(tl.where(v0 + cols < V, c, float("-inf")), 0))
        s, m = s * tl.exp(m - m_new) + tl.sum(tl.where(v0 + cols < V, tl.exp(c - m_new), 0.0), 0), m_new
    lse = m + tl.log(s)
    tl.store(loss + row, lse - cap * (2 * tl.sigmoid(2 * tl.load(z + target).to(tl.float32) / cap) - 1))
    for v0 in range(0, V, BV):
        th = 2 * tl.sigmoid(2 * tl.load(z + v0 + cols, mask=v0 + cols < V, other=0.0).to(tl.float32) / cap) - 1
        g = (tl.exp(cap * th - lse) - (v0 + cols == target).to(tl.float32)) * (1 - th * th)
        tl.store(z + v0 + cols, g.to(z.dtype.element_ty), mask=v0 + cols < V)


@triton.jit
def tanh_(x, APPROX: tl.constexpr):
    if APPROX:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def softcap_ce_row(z, targets, loss, V, cap, BV: tl.constexpr, APPROX: tl.constexpr):
    """The whole row in registers: one read, one write, tanh and exp once per logit."""
    row = tl.program_id(0).to(tl.int64)
    z, target, cols = z + row * V, tl.load(targets + row), tl.arange(0, BV)
    th = tanh_(tl.load(z + cols, mask=cols < V, other=0.0).to(tl.float32) / cap, APPROX)
    c = tl.where(cols < V, cap * th, float("-inf"))
    m = tl.max(c, 0)
    e = tl.exp(c - m)
    s = tl.sum(e, 0)
    tl.store(loss + row, m + tl.log(s) - tl.sum(tl.where(cols == target, c, 0.0), 0))
    g = (e / s - (cols == target).to(tl.float32)) * (1 - th * th)
    tl.store(z + cols, g.to(z.dtype.element_ty), mask=cols < V)


@triton.jit
def softcap_ce_rows(z, targets, loss, N, V, cap, ROWS: tl.constexpr, BV: tl.constexpr):
    """ROWS rows per program, each whole in registers."""
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = tl.arange(0, BV)
    m_r, m_c = rows < N, cols < V
    ptr = z + rows[:, None] * V + cols[None, :]
    target = tl.load(targets + rows, mask=m_r, other=0)
    th = 2 * tl.sigmoid(2 * tl.load(ptr, mask=m_r[:, None] & m_c[None, :], other=0.0).to(tl.float32) / cap) - 1
    c = tl.where(m_c[None, :], cap * th, float("-inf"))
    m = tl.max(c, 1)
    e = tl.exp(c - m[:, None])
    s = tl.sum(e, 1)
    hit = cols[None, :] == target[:, None]
    tl.store(loss + rows, m + tl.log(s) - tl.sum(tl.where(hit, c, 0.0), 1), mask=m_r)
    g = (e / s[:, None] - hit.to(tl.float32)) * (1 - th * th)
    tl.store(ptr, g.to(z.dtype.element_ty), mask=m_r[:, None] & m_c[None, :])


def explore_ce() -> None:
    N, V = 98304, 8192
    z0 = (torch.randn(N, V, device="cuda") * 6).bfloat16()
    t = torch.randint(0, V, (N,), device="cuda")
    ref_c = 30 * torch.tanh(z0.float() / 30)
    ref_loss = torch.nn.functional.cross_entropy(ref_c, t, reduction="none")
    ref_g = (torch.softmax(ref_c, -1) - torch.nn.functional.one_hot(t, V)) * (1 - (ref_c / 30) ** 2)
    del ref_c
    z, loss = z0.clone(), torch.empty(N, device="cuda")
    gb = 2 * z0.numel() * 2 / 1e9
    def report(name, call):
        ms = time_ms(call)  # cost does not depend on the values; parity below from a fresh copy
        z.copy_(z0); call()
        print(f"ce {name}: {ms:.3f} ms ({gb / ms:.2f} TB/s of one read + one write) loss err "
              f"{(loss - ref_loss).abs().max().item():.1e} grad rel err {((z.float() - ref_g).norm() / ref_g.norm()).item():.1e}")
    report("loop BV=4096 w=8", lambda: softcap_ce_loop[(N,)](z, t, loss, V, 30.0, BV=4096, num_warps=8))
    for w in (4, 8):
        report(f"row w={w}", lambda: softcap_ce_row[(N,)](z, t, loss, V, 30.0, BV=V, APPROX=False, num_warps=w))
    for rows, w in ((2, 8), (2, 16), (4, 16), (4, 32), (1, 4)):
        report(f"rows={rows} w={w}", lambda: softcap_ce_rows[(triton.cdiv(N, rows),)](z, t, loss, N, V, 30.0, ROWS=rows, BV=V, num_warps=w))




def main() -> None:
    explore_ce()
    triton.set_allocator(lambda size, align, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    M, D, Hd = 98304, 512, 1536
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    x = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    fc = torch.randn(Hd, D, device="cuda", dtype=torch.bfloat16) * D ** -0.5
    proj = torch.randn(D, Hd, device="cuda", dtype=torch.bfloat16) * Hd ** -0.5
    dy = torch.randn(M, D, device="cuda", dtype=torch.bfloat16)
    c_ref = torch.relu(x @ fc.t()).square()
    dh_ref = (dy @ proj) * 2 * c_ref.float().sqrt()
    flop = 2 * M * D * Hd
    print(f"cublas fwd mm: {time_ms(lambda: x @ fc.t()):.3f} ms   bwd mm: {time_ms(lambda: dy @ proj):.3f} ms"
          f"   ({flop / 1e9:.0f} GFLOP each)")
    configs = [(128, 256, 64, 8, 3), (128, 256, 64, 8, 2), (256, 128, 64, 8, 3), (128, 128, 64, 4, 4), (128, 128, 64, 4, 5),
               (128, 128, 64, 8, 5), (128, 128, 128, 4, 3), (128, 64, 64, 4, 6)]
    c = torch.empty(M, Hd, device="cuda", dtype=torch.bfloat16)
    for direction, (b, aux, ref) in {"fwd": (fc, None, c_ref), "bwd": (proj, c_ref, dh_ref)}.items():
        for (bm, bn, bk, w, s), per_sm, prefetch in itertools.product(configs, (1, 2), (False, True)):
            if prefetch and direction == "fwd":
                continue
            tiles = triton.cdiv(M, bm) * triton.cdiv(Hd, bn)
            progs = min(per_sm * sms, tiles)
            call = lambda: relu2_mm_tma[(progs,)](x if direction == "fwd" else dy, b, c, c if aux is None else aux,
                                                 M, Hd, D, BM=bm, BN=bn, BK=bk, BACKWARD=aux is not None,
                                                 B_NK=direction == "fwd", PROGRAMS=progs, WS=False, FLATTEN=True,
                                                 PREFETCH=prefetch, num_warps=w, num_stages=s)
            name = f"{direction} tma persistent programs={per_sm}/SM prefetch={prefetch} BM={bm} BN={bn} BK={bk} w={w} s={s}"
            try:
                c.zero_()
                ms = time_ms(call)
                err = ((c.float() - ref.float()).norm() / ref.float().norm()).item()
                print(f"{name}: {ms:.3f} ms {flop / ms / 1e9:.0f} TFLOPS err {err:.1e}")
            except Exception as exc:
                print(f"{name}: failed {type(exc).__name__}: {str(exc)[:80]}")


if __name__ == "__main__":
    main()

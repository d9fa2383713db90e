"""The chunk's triangular inverse with fewer dependent steps, against FLA's `chunk_gated_delta_rule_fwd_kkt_solve_kernel`
(245-255 us a layer call on an H200 at 98K tokens, plus a ~23 us zero-fill of A; about five times its memory traffic).

Inside a chunk of 64, A = (I + L)^-1 with L strictly lower triangular, L_ij = beta_i k_i.k_j exp2(g_i - g_j). Both
kernels build L as 4x4 blocks of 16 and invert its four diagonal blocks first, then combine them with block products
(A_ij = -A_ii sum_{j<=m<i} L_im A_mj). FLA inverts each diagonal block by forward substitution in four loops one after
another: 4 x 14 dependent steps, each a masked row extraction and two cross-thread sums. Three inverses here (INVERSES):
  substitution  FLA's steps, the four blocks' chains in one loop (independent, so they overlap): exact in fp32;
  doubling      (I + N)^-1 = (I - N)(I + N^2)(I + N^4)(I + N^8) for a diagonal block N (N^16 = 0): six 16x16 products,
                no loop, but where keys are nearly parallel the powers grow to ~C(15, 7) |N|^8 and cancel, losing ~13 bits;
  refined       doubling plus one Newton step X + X (I - (I + N) X), which restores fp32 accuracy (in fp32 products).
The upper blocks are written as zeros, so A needs no zero-filled allocation (FLA's 100 MB memset per call).

    python scripts/kkt_solve_explore.py          # GPU: parity with an fp64 reference, then every launch timed interleaved

On an H200 (docs/perf.md run HD, 12x8192 and 48x2048 alike, us a call): FLA 273 with its zero-fill; substitution with
tf32 block products at 1 warp 184 (FLA's own precision), with tf32x3 213, with ieee 307; the products with tf32 117
(refined 126) but unstable where keys are nearly parallel, with ieee 356. More warps are slower for every variant. The
best stable variant would save ~0.7 ms a step (8 layers), below what the full step resolves (twentieth session), so it
stays out of train_gpt.py. The CPU test (tests/test_kkt_solve_explore.py) runs the kernel in Triton's interpreter against
the fp64 reference."""
import argparse
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl


@triton.jit
def _sub_chunk(k, g, beta, row0, bos, i_h, T, H: tl.constexpr, K: tl.constexpr):
    """Rows row0..row0+15 of one head: k [16, K], g and beta [16], and which rows exist (the last chunk is partial)."""
    o_r = row0 + tl.arange(0, 16)
    m_r = o_r < T
    b_k = tl.load(k + ((bos + o_r) * H + i_h)[:, None] * K + tl.arange(0, K)[None, :], mask=m_r[:, None], other=0.0)
    b_g = tl.load(g + (bos + o_r) * H + i_h, mask=m_r, other=0.0).to(tl.float32)
    b_b = tl.load(beta + (bos + o_r) * H + i_h, mask=m_r, other=0.0).to(tl.float32)
    return b_k, b_g, b_b, m_r


@triton.jit
def _L_block(k_i, g_i, b_i, m_i, k_j, g_j, m_j, DIAGONAL: tl.constexpr):
    """Block (i, j) of L in fp32; a diagonal block keeps only its strictly lower part. The decay is selected, not
    multiplied by a mask: exp2(g_i - g_j) overflows where the mask is 0."""
    keep = m_i[:, None] & m_j[None, :]
    if DIAGONAL:
        keep = keep & (tl.arange(0, 16)[:, None] > tl.arange(0, 16)[None, :])
    kk = tl.dot(k_i, tl.trans(k_j))
    return tl.where(keep, kk * tl.exp2(g_i[:, None] - g_j[None, :]), 0.0) * b_i[:, None]


@triton.jit
def _unit_lower_inverse(N, PRECISION: tl.constexpr, REFINE: tl.constexpr):
    """(I + N)^-1 for a strictly lower triangular 16x16 N: sum_{p<16} (-N)^p as (I - N)(I + N^2)(I + N^4)(I + N^8).
    The powers grow to ~C(15, 7) times |N|^8 where keys are nearly parallel, and the sum cancels them, losing up to
    ~13 bits; REFINE adds one Newton step, X + X (I - (I + N) X), which squares the relative error."""
    o = tl.arange(0, 16)
    eye = (o[:, None] == o[None, :]).to(tl.float32)
    X = eye - N
    N2 = tl.dot(N, N, input_precision=PRECISION)
    X = tl.dot(X, N2, X, input_precision=PRECISION)
    N4 = tl.dot(N2, N2, input_precision=PRECISION)
    X = tl.dot(X, N4, X, input_precision=PRECISION)
    N8 = tl.dot(N4, N4, input_precision=PRECISION)
    X = tl.dot(X, N8, X, input_precision=PRECISION)
    if REFINE:
        X = tl.dot(X, eye - X - tl.dot(N, X, input_precision=PRECISION), X, input_precision=PRECISION)
    return X


@triton.jit
def _substitution_row(N, X, i):
    """Row i of (I + N)^-1 - I from its rows above (FLA's forward substitution step, in registers)."""
    o = tl.arange(0, 16)
    a = tl.where(o < i, tl.sum(tl.where((o == i)[:, None], -N, 0.0), 0), 0.0)
    a = a + tl.sum(a[:, None] * X, 0)
    return tl.where((o == i)[:, None], a[None, :], X)


@triton.jit
def _four_inverses(N0, N1, N2, N3, INVERSE: tl.constexpr, PRECISION: tl.constexpr):
    """(I + N)^-1 of the four diagonal blocks: by products ("doubling", "refined": plus a Newton step) or by forward
    substitution with the four independent chains in one loop ("substitution"; FLA runs them one loop after another)."""
    if INVERSE == "substitution":
        o = tl.arange(0, 16)
        eye = (o[:, None] == o[None, :]).to(tl.float32)
        X0, X1, X2, X3 = -N0, -N1, -N2, -N3  # rows 0 and 1 are already the inverse's (less I)
        for i in range(2, 16):
            X0 = _substitution_row(N0, X0, i)
            X1 = _substitution_row(N1, X1, i)
            X2 = _substitution_row(N2, X2, i)
            X3 = _substitution_row(N3, X3, i)
        X0, X1, X2, X3 = X0 + eye, X1 + eye, X2 + eye, X3 + eye
    else:
        X0 = _unit_lower_inverse(N0, PRECISION, INVERSE == "refined")
        X1 = _unit_lower_inverse(N1, PRECISION, INVERSE == "refined")
        X2 = _unit_lower_inverse(N2, PRECISION, INVERSE == "refined")
        X3 = _unit_lower_inverse(N3, PRECISION, INVERSE == "refined")
    return X0, X1, X2, X3


@triton.jit
def _store_block(A, X, row0, col0, bos, i_h, T, H: tl.constexpr, BT: tl.constexpr):
    o_r = row0 + tl.arange(0, 16)
    tl.store(A + ((bos + o_r) * H + i_h)[:, None] * BT + col0 + tl.arange(0, 16)[None, :], X.to(A.dtype.element_ty),
             mask=(o_r < T)[:, None])


@triton.jit
def _store_zeros(A, row0, col0, bos, i_h, T, H: tl.constexpr, BT: tl.constexpr):
    """Zeros in columns col0.. of rows row0..row0+15: the blocks above the diagonal, which FLA's backward reads."""
    o_r, o_c = row0 + tl.arange(0, 16), tl.arange(0, BT)
    tl.store(A + ((bos + o_r) * H + i_h)[:, None] * BT + o_c[None, :], tl.zeros([16, BT], A.dtype.element_ty),
             mask=(o_r < T)[:, None] & (o_c >= col0)[None, :])


@triton.jit
def kkt_solve_kernel(k, g, beta, A, T, H: tl.constexpr, K: tl.constexpr, INVERSE: tl.constexpr,
                     PRECISION: tl.constexpr):
    """One chunk of 64 of one head: k [B, T, H, K], g (log2 units, cumulative in the chunk) and beta [B, T, H] ->
    A [B, T, H, 64], row t of the chunk's (I + L)^-1 at A[b, t, h], its upper blocks zero."""
    i_t, i_bh = tl.program_id(0), tl.program_id(1)
    bos, i_h, t0 = (i_bh // H).to(tl.int64) * T, i_bh % H, i_t * 64
    k0, g0, b0, m0 = _sub_chunk(k, g, beta, t0, bos, i_h, T, H, K)
    k1, g1, b1, m1 = _sub_chunk(k, g, beta, t0 + 16, bos, i_h, T, H, K)
    k2, g2, b2, m2 = _sub_chunk(k, g, beta, t0 + 32, bos, i_h, T, H, K)
    k3, g3, b3, m3 = _sub_chunk(k, g, beta, t0 + 48, bos, i_h, T, H, K)
    A00, A11, A22, A33 = _four_inverses(_L_block(k0, g0, b0, m0, k0, g0, m0, True),
                                        _L_block(k1, g1, b1, m1, k1, g1, m1, True),
                                        _L_block(k2, g2, b2, m2, k2, g2, m2, True),
                                        _L_block(k3, g3, b3, m3, k3, g3, m3, True), INVERSE, PRECISION)
    L10 = _L_block(k1, g1, b1, m1, k0, g0, m0, False)
    L20 = _L_block(k2, g2, b2, m2, k0, g0, m0, False)
    L21 = _L_block(k2, g2, b2, m2, k1, g1, m1, False)
    L30 = _L_block(k3, g3, b3, m3, k0, g0, m0, False)
    L31 = _L_block(k3, g3, b3, m3, k1, g1, m1, False)
    L32 = _L_block(k3, g3, b3, m3, k2, g2, m2, False)
    # Block forward substitution: A_ij = -A_ii (sum over j <= m < i of L_im A_mj), one block diagonal at a time.
    A10 = -tl.dot(A11, tl.dot(L10, A00, input_precision=PRECISION), input_precision=PRECISION)
    A21 = -tl.dot(A22, tl.dot(L21, A11, input_precision=PRECISION), input_precision=PRECISION)
    A32 = -tl.dot(A33, tl.dot(L32, A22, input_precision=PRECISION), input_precision=PRECISION)
    A20 = -tl.dot(A22, tl.dot(L21, A10, tl.dot(L20, A00, input_precision=PRECISION), input_precision=PRECISION),
                  input_precision=PRECISION)
    A31 = -tl.dot(A33, tl.dot(L32, A21, tl.dot(L31, A11, input_precision=PRECISION), input_precision=PRECISION),
                  input_precision=PRECISION)
    S30 = tl.dot(L31, A10, tl.dot(L30, A00, input_precision=PRECISION), input_precision=PRECISION)
    A30 = -tl.dot(A33, tl.dot(L32, A20, S30, input_precision=PRECISION), input_precision=PRECISION)
    _store_block(A, A00, t0, 0, bos, i_h, T, H, 64)
    _store_zeros(A, t0, 16, bos, i_h, T, H, 64)
    _store_block(A, A10, t0 + 16, 0, bos, i_h, T, H, 64)
    _store_block(A, A11, t0 + 16, 16, bos, i_h, T, H, 64)
    _store_zeros(A, t0 + 16, 32, bos, i_h, T, H, 64)
    _store_block(A, A20, t0 + 32, 0, bos, i_h, T, H, 64)
    _store_block(A, A21, t0 + 32, 16, bos, i_h, T, H, 64)
    _store_block(A, A22, t0 + 32, 32, bos, i_h, T, H, 64)
    _store_zeros(A, t0 + 32, 48, bos, i_h, T, H, 64)
    _store_block(A, A30, t0 + 48, 0, bos, i_h, T, H, 64)
    _store_block(A, A31, t0 + 48, 16, bos, i_h, T, H, 64)
    _store_block(A, A32, t0 + 48, 32, bos, i_h, T, H, 64)
    _store_block(A, A33, t0 + 48, 48, bos, i_h, T, H, 64)


INVERSES = ("doubling", "refined", "substitution")


def kkt_solve(k, g, beta, inverse: str = "substitution", precision: str = "ieee", num_warps: int = 4):
    """FLA's fused kkt + solve_tril for chunks of 64: k [B, T, H, K] (H == HV), g, beta [B, T, H] -> A [B, T, H, 64].
    inverse: how the diagonal blocks are inverted (INVERSES); precision: of the fp32 products (tl.dot's)."""
    if inverse not in INVERSES:
        raise ValueError(f"kkt_solve: inverse={inverse!r}, expected one of {INVERSES}")
    (B, T, H, K) = k.shape
    for name, t in dict(k=k, g=g, beta=beta).items():
        if not t.is_contiguous():
            raise ValueError(f"kkt_solve: {name} must be contiguous")
    if g.shape != (B, T, H) or beta.shape != (B, T, H):
        raise ValueError(f"kkt_solve: g {tuple(g.shape)} and beta {tuple(beta.shape)} must be {(B, T, H)}")
    A = torch.empty(B, T, H, 64, device=k.device, dtype=k.dtype)
    kkt_solve_kernel[(triton.cdiv(T, 64), B * H)](k, g, beta, A, T, H=H, K=K, INVERSE=inverse,
                                                   PRECISION=precision, num_warps=num_warps)
    return A


def reference(k, g, beta, BT: int = 64):
    """fp64 torch: A from k, beta and g (log2 units) by a triangular solve per chunk, as [B, T, H, BT]."""
    B, T, H, K = k.shape
    N = -(-T // BT)
    pad = lambda t: torch.nn.functional.pad(t, [0, 0] * (t.dim() - 2) + [0, N * BT - T]).unflatten(1, (N, BT))  # noqa: E731
    kc = pad(k.double()).transpose(2, 3)  # [B, N, H, BT, K]
    gc, bc = [pad(t.double().unsqueeze(-1)).squeeze(-1).transpose(2, 3) for t in (g, beta)]  # [B, N, H, BT]
    lower = torch.ones(BT, BT, dtype=torch.bool, device=k.device).tril(-1)
    decay = torch.where(lower, gc.unsqueeze(-1) - gc.unsqueeze(-2), float("-inf")).exp2()
    L = bc.unsqueeze(-1) * (kc @ kc.transpose(-1, -2)) * decay
    I = torch.eye(BT, dtype=torch.float64, device=k.device)  # noqa: E741
    A = torch.linalg.solve_triangular(I + L, I.expand_as(L), upper=False, unitriangular=True)
    return A.transpose(2, 3).flatten(1, 2)[:, :T]


def fla_kkt_solve(k, g, beta):
    """Step 1 of FLA's chunk_gated_delta_rule_fwd_intra for chunks of 64, as the trainer runs it (zero-filled A)."""
    import train_gpt as tg
    chunk_fwd = tg.fla_kernels()[3]
    B, T, H, K = k.shape
    A = torch.zeros(B, T, H, 64, device=k.device, dtype=k.dtype)
    chunk_fwd.chunk_gated_delta_rule_fwd_kkt_solve_kernel[(triton.cdiv(T, 64), B * H)](
        k=k, g=g, beta=beta, A=A, cu_seqlens=None, chunk_indices=None, T=T, H=H, HV=H, K=K, BT=64, BC=16)
    return A


def gpu_main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench import best_launch, time_launches
    from fla_config_sweep import SHAPES, layer_inputs
    import train_gpt as tg
    wy_fast = tg.fla_kernels()[5]
    launches = [(i, p, w) for i in INVERSES for p in ("ieee", "tf32x3", "tf32") for w in (1, 2, 4, 8)]
    summed = {}
    for B, T in SHAPES:
        x = layer_inputs(B, T)
        k, g, beta, v = x["k"], x["g"], x["beta"], x["v"]
        exact = reference(k, g, beta)
        w_ref = wy_fast.recompute_w_u_fwd(k=k, v=v, beta=beta, A=exact.to(k.dtype), g=g)  # bf16 A at its best
        calls = {"fla": lambda: fla_kkt_solve(k, g, beta),
                 **{launch: (lambda launch=launch: kkt_solve(k, g, beta, *launch)) for launch in launches}}
        for name, fn in calls.items():
            A = fn()
            err = ((A.double() - exact).abs().max() / exact.abs().max()).item()
            wu = wy_fast.recompute_w_u_fwd(k=k, v=v, beta=beta, A=A, g=g)
            wu_err = [((o.float() - r.float()).abs().max() / r.float().abs().max()).item() for o, r in zip(wu, w_ref)]
            print(f"{B}x{T} {name}: max |A - fp64| / max |fp64| {err:.2e}; w, u against w, u from the rounded fp64 A: "
                  f"{wu_err[0]:.2e} {wu_err[1]:.2e}", flush=True)
        time_launches(calls, args.rounds, f"{B}x{T}", lambda name: "FLA kkt_solve (zero-filled A)" if name == "fla"
                      else f"kkt_solve {name[0]} precision={name[1]} warps={name[2]}", summed)
    print(best_launch(summed))


if __name__ == "__main__":
    gpu_main()

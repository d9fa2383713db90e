"""GDN's chunk forward after the kkt solve in one kernel, against FLA's three (recompute_w_u, fwd_h, fwd_o: ~415 us a
layer call at 48 x 2048 on an H200, docs/perf.md run KD).

FLA splits the forward so that the chunk-parallel parts run over all chunks at once: recompute_w_u writes w and u,
fwd_h walks the chunks of each head in order and writes every chunk's starting state h and v_new = u - w h, and fwd_o
reads q, k, v_new and h back to write o. Here one program per head (and slice of V) walks the chunks in order and does
all of it while the state is in registers: per chunk w = A (beta exp2(g) k), u = A (beta v), v_new = u - w h,
o = scale (exp2(g) q h + tril(exp2(g_i - g_j) q k^T) v_new), h <- exp2(g_last) h + k^T (exp2(g_last - g) v_new).
u never goes to memory, and h, q and k are not read back. The price: seven 64 x 64 products a chunk in one program
instead of two, so a head's chain of chunks is longer. At 48 x 2048 there are 384 heads for 132 SMs; at 12 x 8192
only 96, so the fused kernel can also split V (BV = 32: 192 programs, each recomputing w and q k^T).

    python scripts/gdn_fwd_fused_explore.py [--shapes 48x2048 12x8192] [--bv 64 32] [--warps 4] [--stages 2 3]
    (GPU: parity with FLA's three kernels, then both timed interleaved at each launch setting)

On an H200 (docs/perf.md, twenty-fifth session, runs LA-LD) it ran 299.7 us against FLA's 414.8 at 48 x 2048 (BV 64,
4 warps, 3 stages), 303.2 against 450.8 at 24 x 4096 and 412.4 (BV 32) against 420.1 at 12 x 8192, and in the
trainer's step (profiled) 298 us against 418 a layer call. The whole step with it was 0.13 ms slower and 0.25 ms
faster at 2048 in two interleaved runs, within the noise, so it stays out of train_gpt.py. A likely reason: during
the timed steps the GPU sat at its 700 W power cap with its SM clock pulled down to ~1.8 GHz (run LD), while the
kernel-level times are taken at the full 1.98 GHz.

The CPU test (tests/test_gdn_fwd_fused_explore.py) runs the kernel in Triton's interpreter against the trainer's torch
reference of the gated delta rule."""
import argparse
import statistics

import torch
import triton
import triton.language as tl

from fla_config_sweep import C, H, K, SHAPES, V, core_inputs  # a sibling script; it puts the repo root on sys.path
from bench import best_launch, energy_per_call, energy_reader, nvml_index, time_launches  # noqa: E402 (needs the root that fla_config_sweep added)
import train_gpt as tg  # noqa: E402


@triton.jit
def fwd_fused_kernel(q, k, v, beta, g, A, w, h, v_new, o, h0, ht, scale, T, H: tl.constexpr, K: tl.constexpr,
                     V: tl.constexpr, BT: tl.constexpr, BV: tl.constexpr, USE_H0: tl.constexpr, STORE_HT: tl.constexpr):
    """[B, T, H, D] tensors; beta and g (log2 units, cumulative inside each chunk) [B, T, H]; A = (I + L)^-1 of each
    chunk [B, T, H, BT]; h [B, NT, H, K, V] (each chunk's starting state); h0, ht [B, H, K, V] fp32."""
    i_v, i_bh = tl.program_id(0), tl.program_id(1)
    i_b, i_h = (i_bh // H).to(tl.int64), i_bh % H
    NT = tl.cdiv(T, BT)
    o_k, o_v, o_c = tl.arange(0, K), i_v * BV + tl.arange(0, BV), tl.arange(0, BT)
    p_hh = o_k[:, None] * V + o_v[None, :]  # [K, BV] offsets into a state
    b_h = tl.zeros([K, BV], tl.float32)
    if USE_H0:
        b_h += tl.load(h0 + (i_b * H + i_h) * K * V + p_hh)
    dt = k.dtype.element_ty
    for i_t in range(NT):
        o_t = i_t * BT + o_c
        m_t = o_t < T
        m_row = m_t[:, None]
        p_kk = (i_b * T * H + i_h) * K + o_t[:, None] * (H * K) + o_k[None, :]  # [BT, K] offsets into q, k, w
        p_vv = (i_b * T * H + i_h) * V + o_t[:, None] * (H * V) + o_v[None, :]  # [BT, BV] offsets into v, v_new, o
        p_t = i_b * T * H + i_h + o_t * H
        b_b = tl.load(beta + p_t, mask=m_t, other=0.0).to(tl.float32)
        b_g = tl.load(g + p_t, mask=m_t, other=0.0).to(tl.float32)
        b_A = tl.load(A + (i_b * T * H + i_h) * BT + o_t[:, None] * (H * BT) + o_c[None, :], mask=m_row, other=0.0)
        b_k = tl.load(k + p_kk, mask=m_row, other=0.0)
        b_w = tl.dot(b_A, (b_k * (b_b * tl.exp2(b_g))[:, None]).to(dt)).to(dt)
        if i_v == 0:  # w does not depend on the V slice
            tl.store(w + p_kk, b_w, mask=m_row)
        b_u = tl.dot(b_A, (tl.load(v + p_vv, mask=m_row, other=0.0) * b_b[:, None]).to(dt)).to(dt)
        b_hb = b_h.to(dt)
        tl.store(h + ((i_b * NT + i_t) * H + i_h) * K * V + p_hh, b_hb)
        b_vn = b_u.to(tl.float32) - tl.dot(b_w, b_hb)
        b_vnb = b_vn.to(dt)
        tl.store(v_new + p_vv, b_vnb, mask=m_row)
        b_q = tl.load(q + p_kk, mask=m_row, other=0.0)
        b_s = tl.dot(b_q, tl.trans(b_k))
        b_s = tl.where((o_c[:, None] >= o_c[None, :]) & m_row, b_s * tl.exp2(b_g[:, None] - b_g[None, :]), 0.0)
        b_o = tl.dot(b_q, b_hb) * tl.exp2(b_g)[:, None]
        b_o = (b_o + tl.dot(b_s.to(dt), b_vnb)) * scale
        tl.store(o + p_vv, b_o.to(o.dtype.element_ty), mask=m_row)
        b_g_last = tl.load(g + i_b * T * H + i_h + (tl.minimum((i_t + 1) * BT, T) - 1) * H).to(tl.float32)
        b_vd = (b_vn * tl.where(m_t, tl.exp2(b_g_last - b_g), 0.0)[:, None]).to(dt)
        b_h = tl.dot(tl.trans(b_k), b_vd, b_h * tl.exp2(b_g_last))
    if STORE_HT:
        tl.store(ht + (i_b * H + i_h) * K * V + p_hh, b_h)


def fwd_fused(q, k, v, beta, g, A, scale: float, initial_state=None, want_state: bool = False, BV: int = 64,
              num_warps: int = 4, num_stages: int = 3):
    """-> w, h, v_new, o, final state (None unless want_state): what FLA's recompute_w_u_fwd, chunk_gated_delta_rule_fwd_h
    and chunk_fwd_o return between them (u stays inside)."""
    (B, T, H, K), V, BT = k.shape, v.shape[-1], A.shape[-1]
    for name, t in dict(q=q, k=k, v=v, beta=beta, g=g, A=A).items():
        if not t.is_contiguous():
            raise ValueError(f"fwd_fused: {name} must be contiguous")
    if V % BV or K & (K - 1) or BV & (BV - 1) or BT & (BT - 1):
        raise ValueError(f"fwd_fused: K={K}, BV={BV} and the chunk {BT} must be powers of two, BV dividing V={V}")
    NT = triton.cdiv(T, BT)
    w, v_new, o = torch.empty_like(k), torch.empty_like(v), torch.empty_like(v)
    h = k.new_empty(B, NT, H, K, V)
    ht = k.new_empty(B, H, K, V, dtype=torch.float32) if want_state else None
    h0 = None if initial_state is None else initial_state.float().contiguous()
    fwd_fused_kernel[(V // BV, B * H)](q, k, v, beta, g, A, w, h, v_new, o, k if h0 is None else h0,
                                       k if ht is None else ht, scale, T, H=H, K=K, V=V, BT=BT, BV=BV,
                                       USE_H0=h0 is not None, STORE_HT=want_state, num_warps=num_warps,
                                       num_stages=num_stages)
    return w, h, v_new, o, ht


def solved_chunks(k, beta, g, BT: int = 64):
    """fp32 torch: A = (I + L)^-1 per chunk, L_ij = beta_i k_i.k_j exp2(g_i - g_j) below the diagonal, as [B, T, H, BT]
    (FLA's layout; a partial last chunk's rows only)."""
    B, T, H, K = k.shape
    N = -(-T // BT)
    pad = lambda t: torch.nn.functional.pad(t.float(), [0, 0] * (t.dim() - 2) + [0, N * BT - T]).unflatten(1, (N, BT))  # noqa: E731
    kc, bc, gc = pad(k).transpose(2, 3), pad(beta.unsqueeze(-1)).squeeze(-1).transpose(2, 3), pad(g.unsqueeze(-1)).squeeze(-1).transpose(2, 3)
    lower = torch.ones(BT, BT, dtype=torch.bool, device=k.device).tril(-1)
    decay = torch.where(lower, gc.unsqueeze(-1) - gc.unsqueeze(-2), float("-inf")).exp2()
    L = bc.unsqueeze(-1) * (kc @ kc.transpose(-1, -2)) * decay
    eye = torch.eye(BT, device=k.device)
    A = torch.linalg.solve_triangular(eye + L, eye.expand_as(L), upper=False, unitriangular=True)
    return A.transpose(2, 3).flatten(1, 2)[:, :T].contiguous()


def gpu_main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", default=[f"{B}x{T}" for B, T in SHAPES], help="batch x length")
    parser.add_argument("--bv", nargs="+", type=int, default=[64, 32], help="V slice widths")
    parser.add_argument("--warps", nargs="+", type=int, default=[4])
    parser.add_argument("--stages", nargs="+", type=int, default=[2, 3])
    parser.add_argument("--energy-calls", type=int, default=0, help="then FLA's kernels and the first launch setting, "
                        "this many calls each (~1 s), rounds times: millijoules a call from the GPU's energy counter")
    args = parser.parse_args()
    shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes if shape.count("x") == 1 and
              shape.replace("x", "").isdigit()]
    if len(shapes) != len(args.shapes):
        parser.error(f"--shapes {' '.join(args.shapes)}: expected batch x length pairs such as 48x2048")
    chunk_delta_h, chunk_o, _, _, _, wy_fast, _ = tg.fla_kernels()
    launches = [(bv, warps, stages) for bv in args.bv for warps in args.warps for stages in args.stages]
    summed = {}
    for B, T in shapes:
        q, k, v, beta, g, A = tg.gdn_core_fwd(*core_inputs(B, T), None, None, H, K, V, H, C, False)[2:8]
        scale = K ** -0.5

        def fla():
            w_, u_ = wy_fast.recompute_w_u_fwd(k=k, v=v, beta=beta, A=A, g=g)
            h_, vn_, _ = chunk_delta_h.chunk_gated_delta_rule_fwd_h(k=k, w=w_, u=u_, g=g, initial_state=None,
                                                                   output_final_state=False, chunk_size=C)
            return w_, h_, vn_, chunk_o.chunk_fwd_o(q=q, k=k, v=vn_, h=h_, g=g, scale=scale, chunk_size=C)
        ref = fla()
        ours = {launch: (lambda launch=launch: fwd_fused(q, k, v, beta, g, A, scale, None, False, *launch))
                for launch in launches}
        for launch, fn in ours.items():
            out = fn()
            errs = [((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(out[:4], ref)]
            print(f"{B}x{T} fused BV={launch[0]} warps={launch[1]} stages={launch[2]}: max |fused - FLA| / max |FLA| "
                  f"for w h v_new o: " + " ".join(f"{e:.2e}" for e in errs), flush=True)
        time_launches({"fla": fla, **ours}, args.rounds, f"{B}x{T}", lambda name: "FLA recompute_w_u + fwd_h + fwd_o"
                      if name == "fla" else "fused BV={} warps={} stages={}".format(*name), summed)
        if args.energy_calls:  # under a power cap a step's time follows its energy, not a kernel's latency (run LD)
            read_joules = energy_reader(nvml_index(torch.device("cuda", torch.cuda.current_device())))
            if read_joules is None:
                raise SystemExit("--energy-calls: the GPU's energy counter cannot be read (see the line above)")
            calls = {"FLA's three kernels": fla, "fused BV={} warps={} stages={}".format(*launches[0]): ours[launches[0]]}
            energy = {name: [] for name in calls}
            for _ in range(args.rounds):
                for name, fn in calls.items():
                    energy[name].append(energy_per_call(fn, args.energy_calls, read_joules))
            for name, runs in energy.items():
                mj, watts = [r[0] for r in runs], [r[1] for r in runs]
                print(f"{B}x{T} {name}: energy median {statistics.median(mj):.2f} mJ a call (min {min(mj):.2f}, max "
                      f"{max(mj):.2f}) at median {statistics.median(watts):.0f} W", flush=True)
    print(best_launch(summed))


if __name__ == "__main__":
    gpu_main()

"""FLA's chunk GDN kernels, one at a time, at the trainer's shapes, under Triton launch configs beyond FLA's own
autotune lists (FLA offers Hopper 2 or 4 warps for most of them and never num_stages=1 or BV=16). Each kernel is
timed through the FLA function the trainer calls (CUDA events, median of 30 after warm-up), first with FLA's own
autotuned pick, then pinned to each config of a wider space; every config's outputs are checked against the pick's
(a config that races or miscompiles shows up as a large difference). Random bf16 inputs through the trainer's own
forward op.   python scripts/fla_config_sweep.py [--out results.jsonl] [--kernels NAME ...]"""
import argparse
import itertools
import json
import statistics
import sys
from pathlib import Path

import torch
import triton
from triton.runtime.autotuner import Autotuner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402
from bench import cuda_median_ms  # noqa: E402

H, K, V, C = 8, 64, 64, 64
SHAPES = ((12, 8192), (48, 2048))  # batch x length: the bench's 98,304 tokens per step
KERNEL_NAMES = ("kkt_solve", "recompute_w_u", "fwd_h", "fwd_o", "bwd_dv_local", "bwd_dhu", "bwd_dqkwg", "wy_bwd")


def autotuner(obj) -> Autotuner:  # FLA stacks triton.heuristics over its autotuner; walk down to it
    while not isinstance(obj, Autotuner):
        obj = obj.fn
    return obj


def space(meta: dict, warps=(2, 4, 8), stages=(1, 2, 3, 4)) -> list[triton.Config]:
    keys = list(meta)
    return [triton.Config(dict(zip(keys, values)), num_warps=w, num_stages=s)
            for values in itertools.product(*meta.values()) for w in warps for s in stages]


def core_inputs(B: int, T: int) -> tuple:
    """Random inputs of the trainer's GDN op at one layer's shapes: P = [q|k|v|a|b], conv weight, A_log, dt_bias."""
    torch.manual_seed(0)
    P = torch.randn(B, T, 2 * H * K + H * V + 2 * H, device="cuda", dtype=torch.bfloat16)
    conv_weight = torch.randn(2 * H * K + H * V, 4, device="cuda") * 0.5
    return P, conv_weight, torch.rand(H, device="cuda").mul(15).add(1).log(), torch.full((H,), -3.0, device="cuda")


def layer_inputs(B: int, T: int) -> dict:
    """One GDN layer's forward through the trainer's op, then the backward's intermediates as the trainer makes them
    (and u, which the trainer's forward does not keep, from FLA's recompute_w_u on the forward's A)."""
    chunk_delta_h, chunk_o, _, _, _, _, _ = tg.fla_kernels()
    _, _, q, k, v, beta, g, A, w, h, v_new = tg.gdn_core_fwd(*core_inputs(B, T), None, None, H, K, V, H, C, False)
    do, scale = torch.randn_like(v) * 0.1, K ** -0.5
    dv = chunk_o.chunk_bwd_dv_local(q=q, k=k, do=do, g=g, scale=scale, chunk_size=C)
    dh, _, dv = chunk_delta_h.chunk_gated_delta_rule_bwd_dhu(q=q, k=k, w=w, do=do, dv=dv, g=g, h0=None, dht=None,
                                                             scale=scale, chunk_size=C)
    _, _, dw, _ = chunk_o.chunk_bwd_dqkwg(q=q, k=k, v=v_new, w=w, g=g, h=h, dv=dv, do=do, dh=dh, scale=scale,
                                          chunk_size=C)
    u = tg.fla_kernels()[5].recompute_w_u_fwd(k=k, v=v, beta=beta, A=A, g=g)[1]
    return dict(q=q, k=k, v=v, beta=beta, g=g, A=A, w=w, u=u, h=h, v_new=v_new, do=do, dv=dv, dh=dh, dw=dw,
                scale=scale)


def kernels() -> dict:
    """name -> (FLA kernel object, call of the FLA function the trainer uses, config space). kkt_solve's function
    also zero-fills A and runs recompute_w_u (at FLA's pick), so its times include ~170 us that do not change."""
    chunk_delta_h, chunk_o, _, chunk_fwd, _, wy_fast, _ = tg.fla_kernels()
    qkg = lambda x: dict(q=x["q"], k=x["k"], g=x["g"], scale=x["scale"], chunk_size=C)  # noqa: E731
    return {
        "kkt_solve": (chunk_fwd.chunk_gated_delta_rule_fwd_kkt_solve_kernel,
                      lambda x: chunk_fwd.chunk_gated_delta_rule_fwd_intra(k=x["k"], v=x["v"], g=x["g"],
                                                                           beta=x["beta"], chunk_size=C),
                      space({"BK": (32, 64)}, warps=(1, 2, 4, 8))),
        "recompute_w_u": (wy_fast.recompute_w_u_fwd_kernel,
                          lambda x: wy_fast.recompute_w_u_fwd(k=x["k"], v=x["v"], beta=x["beta"], A=x["A"], g=x["g"]),
                          space({})),
        "fwd_h": (chunk_delta_h.chunk_gated_delta_rule_fwd_kernel_h_blockdim64,
                  lambda x: chunk_delta_h.chunk_gated_delta_rule_fwd_h(k=x["k"], w=x["w"], u=x["u"], g=x["g"],
                                                                     initial_state=None, output_final_state=False,
                                                                     chunk_size=C)[:2],
                  space({"BV": (16, 32, 64)}, warps=(1, 2, 4, 8))),
        "fwd_o": (chunk_o.chunk_fwd_kernel_o,
                  lambda x: chunk_o.chunk_fwd_o(v=x["v_new"], h=x["h"], **qkg(x)),
                  space({"BK": (32, 64), "BV": (32, 64)})),
        "bwd_dv_local": (chunk_o.chunk_bwd_kernel_dv_local,
                         lambda x: chunk_o.chunk_bwd_dv_local(do=x["do"], **qkg(x)),
                         space({})),
        "bwd_dhu": (chunk_delta_h.chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64,
                    lambda x: chunk_delta_h.chunk_gated_delta_rule_bwd_dhu(w=x["w"], do=x["do"], dv=x["dv"], h0=None,
                                                                         dht=None, **qkg(x)),
                    space({"BV": (16, 32, 64)}, warps=(1, 2, 4, 8))),
        "bwd_dqkwg": (chunk_o.chunk_bwd_kernel_dqkwg,
                      lambda x: chunk_o.chunk_bwd_dqkwg(v=x["v_new"], w=x["w"], h=x["h"], dv=x["dv"], do=x["do"],
                                                        dh=x["dh"], **qkg(x)),
                      space({})),
        "wy_bwd": (wy_fast.prepare_wy_repr_bwd_kernel,
                   lambda x: wy_fast.prepare_wy_repr_bwd(k=x["k"], v=x["v"], beta=x["beta"], A=x["A"], dw=x["dw"],
                                                         du=x["dv"], g=x["g"]),
                   space({})),
    }


def rel_diff(outs, refs) -> float:
    return max(((o.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-30)).item()
               for o, r in zip(outs, refs) if isinstance(r, torch.Tensor))


def describe(config: triton.Config) -> str:
    return ",".join(f"{k}={v}" for k, v in config.kwargs.items()) + f",w={config.num_warps},s={config.num_stages}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="append one JSON line per kernel, config and shape here")
    parser.add_argument("--kernels", nargs="+", choices=KERNEL_NAMES, default=KERNEL_NAMES, help="default: all")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved re-timings of FLA's pick and the best")
    args = parser.parse_args()
    inputs, table = {shape: layer_inputs(*shape) for shape in SHAPES}, kernels()
    log = args.out.open("a") if args.out else None
    timed = lambda call, x: cuda_median_ms(lambda: call(x), 30, warmup=5)  # noqa: E731
    for name in args.kernels:
        kernel, call, wide = table[name]
        tuner = autotuner(kernel)
        own = list(tuner.configs)
        tuner.cache.clear()
        refs = {shape: call(x) for shape, x in inputs.items()}  # at FLA's own pick, autotuned on the first call
        base = {shape: timed(call, x) for shape, x in inputs.items()}
        picked = next(iter(tuner.cache.values()))  # the key has no length in it: one pick for both shapes
        print(f"{name}: FLA's pick {describe(picked)} of {len(own)}: " +
              ", ".join(f"{B}x{T} {base[(B, T)] * 1e3:.1f} us" for B, T in SHAPES), flush=True)
        best = {shape: (base[shape], picked) for shape in SHAPES}
        for config in wide:
            tuner.configs = [config]
            tuner.cache.clear()
            row = {"kernel": name, "config": describe(config), "in_fla_list": describe(config) in map(describe, own)}
            for shape, x in inputs.items():
                try:
                    diff = rel_diff(call(x), refs[shape])
                    ms = timed(call, x)
                except Exception as err:  # out of shared memory or registers: the config does not build
                    row.update({f"fails_{shape[1]}": type(err).__name__})
                    break
                row.update({f"us_{shape[1]}": round(ms * 1e3, 1), f"vs_pick_{shape[1]}": round(ms / base[shape], 3),
                            f"rel_diff_{shape[1]}": float(f"{diff:.2e}")})
                if diff < 2e-2 and ms < best[shape][0]:
                    best[shape] = (ms, config)
            print("  " + " ".join(f"{k}={v}" for k, v in row.items() if k != "kernel"), flush=True)
            if log:
                log.write(json.dumps(row) + "\n")
                log.flush()
        for shape in SHAPES:
            print(f"{name} {shape[0]}x{shape[1]}: best {describe(best[shape][1])} {best[shape][0] * 1e3:.1f} us "
                  f"against FLA's pick {base[shape] * 1e3:.1f} us ({best[shape][0] / base[shape]:.3f}x)", flush=True)
        finalists = list({describe(c): c for c in [picked] + [best[shape][1] for shape in SHAPES]}.values())
        if len(finalists) > 1:  # one timing can be off by up to 1.7x (bwd_dv_local): re-time the finalists interleaved
            times = {(describe(c), shape): [] for c in finalists for shape in SHAPES}
            for _ in range(args.rounds):
                for config in finalists:
                    tuner.configs = [config]
                    tuner.cache.clear()
                    for shape, x in inputs.items():
                        times[(describe(config), shape)].append(timed(call, x))
            for (label, shape), ms in times.items():
                print(f"{name} {shape[0]}x{shape[1]} interleaved x{args.rounds}: {label} "
                      f"median {statistics.median(ms) * 1e3:.1f} us "
                      f"(min {min(ms) * 1e3:.1f}, max {max(ms) * 1e3:.1f})", flush=True)
        tuner.configs = own
        tuner.cache.clear()


if __name__ == "__main__":
    main()

"""Throughput benchmark of the trainer's real training step, several presets side by side in one process.

Each case builds train_gpt's own Trainer (same modules, Muon + AdamW, EMA, torch.compile settings) on random
tokens, runs warm-up steps (compilation, autotuning), then times `--steps` steps with CUDA events and reports
the median: tok/s, ms/step, peak memory and MFU. Sequence lengths change at a fixed number of tokens per step.

    python bench.py                                   # gdn_hybrid, attention, pure_gdn x 2048/4096/8192
    python bench.py --presets gdn_hybrid --seq-lens 2048 --steps 30 --out bench.json
    python bench.py --cpu-smoke                       # tiny model on CPU, to keep this script from rotting

FLOP count per token (forward + backward = 3x forward), documented so MFU can be checked by hand:
  * matmuls: 6 * (parameters used in matmuls), counting the tied embedding once as the output head
    (the input lookup is free); norms, gates, convs and elementwise work are not counted.
  * causal softmax attention: per layer, QK^T and AV each cost 2 * (T/2) * d_model per token on average,
    so 6 * T * d_model per token for forward + backward.
  * chunked gated delta rule (chunk C, key dim K, value dim V, per head, per token, forward):
      intra-chunk K K^T and Q K^T: 4 C K;  triangular solve for the WY form: (2/3) C^2;
      W = T (beta exp(G) K) and U0 = T (beta V): 2 C K + 2 C V;  scores @ U: 2 C V;
      chunk-state terms W S, Q S and the state update K^T U: 6 K V;  times 3 for forward + backward.
Peak: bf16 dense 989 TFLOP/s (H100 SXM datasheet); override with --peak-tflops.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import types

import torch

import train_gpt as tg


class RandomBatches:
    """The TrainLoader interface over a few random (never zero) token batches, rotated step by step."""

    def __init__(self, cfg: tg.TrainConfig, d: tg.Dist, vocab_size: int, variants: int = 3):
        seqs = cfg.global_batch_tokens // cfg.seq_len
        if seqs % (d.world * cfg.micro_batch_seqs):
            raise ValueError(f"{seqs} sequences per step do not split into micro batches of {cfg.micro_batch_seqs}")
        self.accum_steps, self.position = seqs // (d.world * cfg.micro_batch_seqs), 0
        gen = torch.Generator(device=d.device).manual_seed(0)
        shape = (cfg.micro_batch_seqs, cfg.seq_len + 1)
        self.batches = [[(t[:, :-1], t[:, 1:]) for t in (torch.randint(1, vocab_size, shape, generator=gen, device=d.device)
                                                         for _ in range(self.accum_steps))] for _ in range(variants)]

    def next_batch(self):
        self.position += 1
        return self.batches[self.position % len(self.batches)]


_FLA_CHUNK = []


def fla_chunk(q, k, v, g, beta, S0, scale: float, chunk_size: int):
    """FLA's chunked gated delta rule as a torch.library custom op (its forward and backward kernels), so that
    torch.compile keeps the whole GDN block in one graph around it. Returns o and the final state."""
    S0 = q.new_zeros(q.shape[0], v.shape[2], q.shape[3], v.shape[3], dtype=torch.float32) if S0 is None else S0.float()
    o, S, _, _ = _FLA_CHUNK[0](q.contiguous(), k.contiguous(), v.contiguous(), g.contiguous(), beta.contiguous(), S0,
                               scale, chunk_size)
    return o, S


def register_fla_chunk_op() -> None:
    """Called once, outside compiled code, since registration cannot be traced."""
    if _FLA_CHUNK:
        return
    from fla.ops.gated_delta_rule.chunk import chunk_gated_delta_rule_bwd, chunk_gated_delta_rule_fwd

    @torch.library.custom_op("gdn_harness::chunk_fwd", mutates_args=(), schema="(Tensor q, Tensor k, Tensor v, "
                             "Tensor g, Tensor beta, Tensor h0, float scale, int chunk_size) -> (Tensor, Tensor, Tensor, Tensor)")
    def chunk_fwd(q, k, v, g, beta, h0, scale, chunk_size):
        g_cum, o, A, ht, _, _ = chunk_gated_delta_rule_fwd(q=q, k=k, v=v, g=g, beta=beta, scale=scale, initial_state=h0,
                                                           output_final_state=True, chunk_size=chunk_size)
        return o.to(q.dtype).contiguous(), ht, g_cum, A

    @chunk_fwd.register_fake
    def _(q, k, v, g, beta, h0, scale, chunk_size):
        return (v.new_empty(v.shape, dtype=q.dtype), h0.new_empty(h0.shape), g.new_empty(g.shape, dtype=torch.float32),
                k.new_empty(*k.shape[:2], v.shape[2], chunk_size))

    @torch.library.custom_op("gdn_harness::chunk_bwd", mutates_args=(), schema="(Tensor q, Tensor k, Tensor v, "
                             "Tensor g_cum, Tensor beta, Tensor A, Tensor h0, Tensor do, Tensor dht, float scale, "
                             "int chunk_size) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
    def chunk_bwd(q, k, v, g_cum, beta, A, h0, do, dht, scale, chunk_size):
        dq, dk, dv, db, dg, dh0, _, _ = chunk_gated_delta_rule_bwd(q=q, k=k, v=v, g=g_cum, beta=beta, A=A, scale=scale,
                                                                   initial_state=h0, do=do, dht=dht,
                                                                   chunk_size=chunk_size)
        grads = dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), dg.float(), db.to(beta.dtype), dh0.float()
        return tuple(t.contiguous() for t in grads)

    @chunk_bwd.register_fake
    def _(q, k, v, g_cum, beta, A, h0, do, dht, scale, chunk_size):
        return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), torch.empty_like(g_cum),
                torch.empty_like(beta), torch.empty_like(h0))

    def setup_context(ctx, inputs, output):
        q, k, v, _, beta, h0, ctx.scale, ctx.chunk_size = inputs
        ctx.save_for_backward(q, k, v, output[2], beta, output[3], h0)

    def backward(ctx, do, dht, _g_cum, _A):
        q, k, v, g_cum, beta, A, h0 = ctx.saved_tensors
        dht = torch.zeros_like(h0) if dht is None else dht
        dq, dk, dv, dg, db, dh0 = chunk_bwd(q, k, v, g_cum, beta, A, h0, do.contiguous(), dht.contiguous(),
                                            ctx.scale, ctx.chunk_size)
        return dq, dk, dv, dg, db, dh0, None, None

    chunk_fwd.register_autograd(backward, setup_context=setup_context)
    _FLA_CHUNK.append(chunk_fwd)


def fla_op_recurrence(self, qkv, a, b, conv_state, S0, want_state):
    """The variant gdn_recurrence=fla_op: the short conv (shifted multiply-adds), L2 norm and gate math in torch,
    fused by inductor, and the FLA chunk kernels as a custom op, so each GDN block compiles to one graph.
    Measured slower than train_gpt's default (FLA's autograd Functions with their in-kernel L2 norm and gates)."""
    q, k, v, conv_state = tg.short_conv_qkv(qkv, torch.cat([self.q_conv, self.k_conv, self.v_conv]), conv_state,
                                            (self.H, self.K, self.Vh))
    g = -self.A_log.float().exp() * torch.nn.functional.softplus(a.float() + self.dt_bias.float())
    o, S = fla_chunk(q, k, v, g, b.float().sigmoid().to(q.dtype), S0, self.K ** -0.5, self.chunk_size)
    return o, conv_state, S


@torch.compiler.disable  # FLA's autograd Functions run eagerly, a graph break as in train_gpt's path
def fla_conv_recurrence(self, qkv, a, b, conv_state, S0, want_state):
    """The variant gdn_recurrence=fla_conv (train_gpt's path before the fused short-conv kernel): FLA's
    causal_conv1d + SiLU, a split of q|k|v that FLA's kernels copy to contiguous tensors, and the L2 norm of q and
    k in FLA's chunk Function."""
    from fla.modules.convolution import causal_conv1d
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    (B, T), H, K, Vh = qkv.shape[:2], self.H, self.K, self.Vh
    conv_weight = torch.cat([self.q_conv, self.k_conv, self.v_conv]).to(qkv.dtype)
    qkv, conv_state = causal_conv1d(qkv, conv_weight, activation="silu", initial_state=conv_state,
                                    output_final_state=want_state)
    q, k, v = qkv.split([H * K, H * K, H * Vh], dim=-1)
    o, S = chunk_gated_delta_rule(q.reshape(B, T, H, K), k.reshape(B, T, H, K), v.reshape(B, T, H, Vh), a, b,
                                  scale=K ** -0.5, initial_state=S0, output_final_state=want_state,
                                  use_qk_l2norm_in_kernel=True, use_beta_sigmoid_in_kernel=True,
                                  use_gate_in_kernel=True, A_log=self.A_log, dt_bias=self.dt_bias, chunk_size=self.chunk_size)
    return o, conv_state, S


RECURRENCE_VARIANTS = {"fla_op": fla_op_recurrence, "fla_conv": fla_conv_recurrence}


def flops_per_token(m: tg.ModelConfig, seq_len: int) -> dict[str, float]:
    model = tg.GPT(m)
    matmul = sum(p.numel() for n, p in model.named_parameters() if tg.param_role(n) != "scalar" or n.endswith(("a_proj.weight", "b_proj.weight")))
    C, K, V = m.chunk_size, m.gdn_head_dim, int(m.gdn_head_dim * m.gdn_expand_v)
    gdn_head = 4 * C * K + (2 / 3) * C * C + 2 * C * K + 2 * C * V + 2 * C * V + 6 * K * V
    return dict(matmul=6.0 * matmul, attention=6.0 * seq_len * m.model_dim * m.layout.count("A"),
                gdn=3.0 * gdn_head * m.gdn_heads * m.layout.count("G"))


KERNEL_CATEGORIES = [  # first match wins; a kernel name is lower-cased before matching
    ("gemm", ("gemm", "nvjet", "cutlass", "cublas", "sm90_xmma")),
    ("softmax attention", ("flash", "fmha", "cudnn", "attention")),
    ("fla short conv", ("causal_conv1d",)),
    ("fused short conv (harness)", ("short_conv",)),
    ("fla chunk delta rule", ("chunk", "wy", "recompute_w_u", "solve_tril", "kkt", "l2norm", "gdn_gate", "cumsum",
                              "beta_sigmoid")),
    ("inductor fused elementwise/reductions", ("triton_",)),
    ("copies and casts", ("copy", "cat", "elementwise_kernel", "fill", "vectorized")),
]


def kernel_category(name: str) -> str:
    lower = name.lower()
    return next((cat for cat, keys in KERNEL_CATEGORIES if any(k in lower for k in keys)), "other")


def write_profile(trainer: tg.Trainer, path: str, steps: int = 2) -> None:
    """torch.profiler over a few steps: device time per step by kernel category, then the top kernels by device
    time. The category sum against the step's wall time says whether the step is GPU-bound."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step(1.0, 0.95, False)
        tg.synchronize(trainer.d)
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    by_category: dict[str, float] = {}
    for e in kernels:
        cat = kernel_category(e.key)
        by_category[cat] = by_category.get(cat, 0.0) + e.self_device_time_total / 1000 / steps
    sort = "self_cuda_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(f"device time per step by kernel category (ms), {steps} profiled steps:\n")
        for cat, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
            f.write(f"  {cat:40s} {ms:8.2f}\n")
        f.write(f"  {'total':40s} {sum(by_category.values()):8.2f}\n\n")
        f.write(prof.key_averages().table(sort_by=sort, row_limit=60, max_name_column_width=90))


def bench_case(preset: str, seq_len: int, tokens: int, steps: int, warmup: int, extra: list[str], d: tg.Dist,
               peak_tflops: float, profile_path: str = "") -> dict:
    variant = next((o.split("=", 1)[1] for o in extra if o.startswith("gdn_recurrence=")), None)
    cfg = tg.load_config([f"model={preset}", "export=none", f"train.seq_len={seq_len}", f"train.global_batch_tokens={tokens}",
                          f"train.micro_batch_seqs={tokens // seq_len}"] + [o for o in extra if not o.startswith("gdn_recurrence=")])
    trainer = tg.Trainer(cfg, d, RandomBatches(cfg.train, d, cfg.model.vocab_size))
    if variant == "fla_op":
        register_fla_chunk_op()
    for block in trainer.model.blocks if variant else []:
        if block.kind == "G":
            block.mixer.recurrence = types.MethodType(RECURRENCE_VARIANTS[variant], block.mixer)
    for _ in range(warmup):
        trainer.train_step(1.0, 0.95, False)
    tg.synchronize(d)
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        for start, end in events:
            start.record()
            trainer.train_step(1.0, 0.95, False)
            end.record()
        torch.cuda.synchronize(d.device)
        times_ms = [start.elapsed_time(end) for start, end in events]
    else:
        times_ms = []
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step(1.0, 0.95, False)
            times_ms.append(1000 * (time.perf_counter() - t0))
    if profile_path:
        write_profile(trainer, profile_path)
    ms = statistics.median(times_ms)
    flops = flops_per_token(cfg.model, seq_len)
    tok_s = tokens / (ms / 1000)
    return dict(preset=preset, layout=cfg.model.layout, seq_len=seq_len, tokens_per_step=tokens,
                params=sum(p.numel() for p in trainer.model.parameters()), ms_per_step=ms,
                ms_spread=[min(times_ms), max(times_ms)], tok_per_s=tok_s, peak_mem_mib=tg.peak_memory_mib(d),
                flops_per_token=flops, mfu=tok_s * sum(flops.values()) / (peak_tflops * 1e12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["gdn_hybrid", "attention", "pure_gdn"])
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[2048, 4096, 8192])
    parser.add_argument("--tokens-per-step", type=int, default=98304, help="per GPU (the 8-GPU recipe's share)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--out", default="")
    parser.add_argument("--profile-dir", default="", help="write a torch.profiler table per case here")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, 2 steps (for CI)")
    parser.add_argument("--variants", nargs="+", default=[""],
                        help="override sets compared side by side; gdn_recurrence=fla_op|fla_conv swaps in an experimental "
                             "GDN path (see RECURRENCE_VARIANTS), e.g. --variants '' gdn_recurrence=fla_op")
    parser.add_argument("--short-conv-dx", default="", metavar="ROWS,TILES,WARPS",
                        help="dx/dw kernel tile setting of train_gpt.ShortConvQKV (tuning; see scripts/short_conv_bench.py)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every case, e.g. model.kernel=torch")
    args = parser.parse_args()
    extra = list(args.overrides)
    if args.short_conv_dx:
        tg.ShortConvQKV.DX_ROWS, tg.ShortConvQKV.DX_TILES, tg.ShortConvQKV.DX_WARPS = map(int, args.short_conv_dx.split(","))
    if args.cpu_smoke:
        args.seq_lens, args.tokens_per_step, args.steps, args.warmup = [64, 128], 512, 2, 1
        extra = ["budget=cpu_smoke", "model.vocab_size=512"] + extra
    d = tg.init_distributed()
    rows = []
    cases = [(s, p, v) for s in args.seq_lens for p in args.presets for v in args.variants]
    for seq_len, preset, variant in cases:
        tag = f"{preset}_{seq_len}" + ("_" + variant.replace(" ", "_").replace("=", "-") if variant else "")
        profile_path = f"{args.profile_dir}/profile_{tag}.txt" if args.profile_dir else ""
        rows.append(bench_case(preset, seq_len, args.tokens_per_step, args.steps, args.warmup, extra + variant.split(),
                               d, args.peak_tflops, profile_path))
        r = rows[-1]
        r["variant"] = variant
        print(f"bench preset:{preset} seq_len:{seq_len} variant:{variant or '-'} tok/s:{r['tok_per_s']:.0f} "
              f"ms/step:{r['ms_per_step']:.2f} peak_mem_mib:{r['peak_mem_mib']:.0f} mfu:{100 * r['mfu']:.1f}%", flush=True)
        torch._dynamo.reset()
        if d.device.type == "cuda":
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if d.device.type == "cuda" else "CPU"
    print(f"\n| preset | seq_len | variant | tok/s | ms/step | peak MiB | MFU |  ({device})\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['seq_len']} | {r['variant'] or '-'} | {r['tok_per_s']:,.0f} | {r['ms_per_step']:.1f} | "
              f"{r['peak_mem_mib']:,.0f} | {100 * r['mfu']:.1f}% |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=device, torch=torch.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

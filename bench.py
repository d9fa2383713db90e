"""Throughput benchmark of the trainer's real training step, several presets side by side in one process.

Each case builds train_gpt's own Trainer (same modules, Muon + AdamW, EMA, torch.compile settings) on random tokens
(or, with --train-files, real shards through the trainer's TrainLoader), runs warm-up steps (compilation,
autotuning), then times `--steps` steps with CUDA events and reports the median: tok/s, ms/step, peak memory and
MFU, and on a GPU the SM clock, power draw and share of power-capped samples while the steps ran (nvidia-smi), and the
energy of a step from the GPU's energy counter (NVML, through nvidia-ml-py).
Sequence lengths change at a fixed number of tokens per step.

    python bench.py                                   # gdn_hybrid, gdn_hybrid_lean, attention, pure_gdn x 2048/4096/8192
    python bench.py --presets gdn_hybrid --seq-lens 2048 --steps 30 --out bench.json
    python bench.py --presets gdn_hybrid attention --seq-lens 8192 --interleave 5   # timed in rounds, against drift
    python bench.py --cpu-smoke                       # tiny model on CPU, to keep this script from rotting
    python bench.py --train-files 'data/datasets/fineweb10B_sp8192/fineweb_train_*.bin'   # real tokens

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
import ast
import bisect
import contextlib
import gzip
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import types

import torch
import torch._inductor.config as inductor_config

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


class ShortConvFunction(torch.autograd.Function):
    """train_gpt.ShortConv as an autograd Function of the q|k|v slice alone: the GDN path before gdn_core_fwd
    (variant gdn_core=fla_function) and the kernel's parity tests."""

    @staticmethod
    def forward(ctx, x, weight, state, dims):
        ctx.save_for_backward(x, weight, state)
        ctx.dims = dims
        return tg.ShortConv.forward(x, weight, state, dims)

    @staticmethod
    def backward(ctx, *grads):
        x, weight, state = ctx.saved_tensors
        dx = x.new_empty(x.shape)
        dweight, dstate = tg.ShortConv.backward(x, weight, state, ctx.dims, grads, dx, ctx.needs_input_grad[2])
        return dx, dweight, dstate, None


@torch.compiler.disable  # eager, a graph break as in train_gpt's path
def fla_function_core(self, P, state, want_state):
    """The variant gdn_core=fla_function (train_gpt's path before its gdn_core_fwd op): the Triton short conv as its own
    autograd Function, then FLA's chunk_gated_delta_rule Function, which recomputes the WY factors and the chunk
    states in its backward; autograd concatenates the pieces of P's gradient."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    (H, HV, K, Vh), (conv_state, S0) = (self.H, self.HV, self.K, self.Vh), state if state is not None else (None, None)
    conv_weight = self.conv_weight()
    qkv, a, b = P.split([2 * H * K + HV * Vh, HV, HV], dim=-1)
    q, k, v = ShortConvFunction.apply(qkv, conv_weight, None if conv_state is None else conv_state.contiguous(),
                                      (H, K, HV * Vh // H))
    v = v.view(*v.shape[:2], HV, Vh)  # grouped value heads: FLA maps value head i to q, k head i // (HV / H)
    o, S = chunk_gated_delta_rule(q, k, v, a, b, scale=K ** -0.5, initial_state=S0, output_final_state=want_state,
                                  use_qk_l2norm_in_kernel=False, use_beta_sigmoid_in_kernel=True,
                                  use_gate_in_kernel=True, A_log=self.A_log, dt_bias=self.dt_bias, chunk_size=self.chunk_size)
    return o, (tg.conv_tail(qkv, conv_state, conv_weight.shape[1]) if want_state else None), S


# The variant gdn_core=graph_break: train_gpt's own op, called outside the compiled graph (as before it was a custom
# op), so each GDN block compiles as two graphs around an eager call. Wrapped once, not on every call.
graph_break_core = torch.compiler.disable(tg.GatedDeltaNet.core)


CORE_VARIANTS = {"fla_function": fla_function_core, "graph_break": graph_break_core}


def newton_schulz_separate_sums(G: torch.Tensor, steps: int) -> torch.Tensor:
    """Muon's iteration as the trainer wrote it until the thirty-second session: a X + (b A + c A A) X term by term,
    which inductor ran as pointwise kernels between the GEMMs (train_gpt.newton_schulz puts the sums inside them)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = G.size(-2) > G.size(-1)
    X = (G.mT if tall else G).to(torch.bfloat16 if G.is_cuda else torch.float32)
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if tall else X).to(G.dtype)


# The variant muon_ns=launched: Muon's Newton-Schulz compiled without CUDA graphs (its kernels launched one by one, as
# before the trainer captured them); muon_ns=eager: not compiled at all; muon_ns=separate_sums: the iteration before
# the thirty-second session, compiled as the trainer compiles it.
MUON_NS_VARIANTS = {"launched": lambda: torch.compile(tg.newton_schulz), "eager": lambda: tg.newton_schulz,
                    "separate_sums": lambda: torch.compile(newton_schulz_separate_sums, mode="reduce-overhead")}


SHORT_CONV_TILES = ("ROWS", "WARPS", "DU_ROWS", "DU_WARPS", "DX_ROWS", "DX_TILES", "DX_WARPS")  # train_gpt.ShortConv's


def load_train_gpt_copy(path, name: str = "other_train_gpt") -> types.ModuleType:
    """Another version of train_gpt.py (an older commit's copy), imported beside this one under `name`, so that the
    component scripts can time its kernels in the same process."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise ValueError(f"{path}: cannot be imported as a Python file (expected a copy of train_gpt.py)")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_short_conv_tiles(setting) -> None:
    """train_gpt.ShortConv's tiles and warps (forward, du pass, dx pass), as scripts/short_conv_bench.py prints them."""
    for name, value in zip(SHORT_CONV_TILES, setting, strict=True):
        setattr(tg.ShortConv, name, int(value))


def flops_per_token(m: tg.ModelConfig, seq_len: int) -> dict[str, float]:
    model = tg.GPT(m)
    matmul = sum(p.numel() for n, p in model.named_parameters() if tg.param_role(n) != "scalar" or n.endswith(("a_proj.weight", "b_proj.weight")))
    C, K, V = m.chunk_size, m.gdn_head_dim, int(m.gdn_head_dim * m.gdn_expand_v)
    gdn_head = 4 * C * K + (2 / 3) * C * C + 2 * C * K + 2 * C * V + 2 * C * V + 6 * K * V
    return dict(matmul=6.0 * matmul, attention=6.0 * seq_len * m.model_dim * m.layout.count("A"),
                gdn=3.0 * gdn_head * (m.gdn_v_heads or m.gdn_heads) * m.layout.count("G"))  # per value head


KERNEL_CATEGORIES = [  # first match wins; a kernel name is lower-cased before matching
    ("gemm", ("gemm", "nvjet", "cutlass", "cublas", "sm90_xmma", "relu2_mm")),
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


def top_kernels(kernels: list[tuple[str, int, float]], steps: int, n: int = 30) -> list[dict]:
    """(name, calls, device us) per kernel over `steps` profiled steps -> the n costliest, each with its category, us a
    call, calls and ms a step (issue 7's report lists the top GDN kernels this way)."""
    return [dict(name=name, category=kernel_category(name), us_per_call=total_us / calls, calls_per_step=calls / steps,
                 ms_per_step=total_us / 1000 / steps) for name, calls, total_us in sorted(kernels, key=lambda k: -k[2])[:n]]


def write_profile(trainer: tg.Trainer, path: str, steps: int = 2) -> None:
    """torch.profiler over a few steps: device time per step by kernel category, the costliest kernels, GPU time by
    host phase, then the profiler's own table. The category sum against the step's wall time says whether the step
    is GPU-bound."""
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
    trace_path = path.removesuffix(".txt") + ".trace.json"
    prof.export_chrome_trace(trace_path)
    with open(trace_path) as f:
        phases = gpu_time_by_phase(json.load(f)["traceEvents"])
    with open(trace_path, "rb") as f_in, gzip.open(trace_path + ".gz", "wb") as f_out:
        shutil.copyfileobj(f_in, f_out)  # for chrome://tracing or Perfetto; the plain JSON is ~10x larger
    os.remove(trace_path)
    with open(path, "w") as f:
        f.write(f"device time per step by kernel category (ms), {steps} profiled steps:\n")
        for cat, ms in sorted(by_category.items(), key=lambda kv: -kv[1]):
            f.write(f"  {cat:40s} {ms:8.2f}\n")
        f.write(f"  {'total':40s} {sum(by_category.values()):8.2f}\n\n")
        f.write(f"top kernels by device time, {steps} profiled steps:\n  {'kernel':90s} {'category':>28s} "
                f"{'us a call':>10s} {'a step':>7s} {'ms a step':>10s}\n")
        for k in top_kernels([(e.key, e.count, e.self_device_time_total) for e in kernels], steps):
            f.write(f"  {k['name'][:90]:90s} {k['category'][:28]:>28s} {k['us_per_call']:10.1f} "
                    f"{k['calls_per_step']:7.1f} {k['ms_per_step']:10.3f}\n")
        f.write("\n")
        f.write(f"GPU time per step by the host phase that launched it (ms), {steps} profiled steps; idle is the time\n"
                f"the GPU waited, before a kernel, for that phase to launch it (the profiler's own host overhead\n"
                f"inflates idle; compare with the unprofiled step time less the kernel total above):\n")
        f.write(f"  {'phase':60s} {'kernels':>8s} {'busy':>8s} {'idle':>8s}\n")
        for name, p in sorted(phases.items(), key=lambda kv: -kv[1]["busy_us"] - kv[1]["idle_us"]):
            f.write(f"  {name[:60]:60s} {p['kernels'] / steps:8.0f} {p['busy_us'] / 1000 / steps:8.2f} "
                    f"{p['idle_us'] / 1000 / steps:8.2f}\n")
        f.write("\n" + prof.key_averages().table(sort_by=sort, row_limit=60, max_name_column_width=90))


def gpu_time_by_phase(events: list[dict]) -> dict[str, dict]:
    """Device activity of a Chrome trace (torch.profiler's export) grouped by the outermost host op or annotation
    that launched it (e.g. the compiled forward, the autograd engine's backward, Optimizer.step#Muon.step).
    busy_us: time the GPU spent in that phase's kernels, memcpys and memsets, overlaps counted once; idle_us: gaps in
    which the GPU had nothing to run, each charged to the phase whose launch ended it."""
    device = sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                    key=lambda e: e["ts"])
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    top_level: dict[tuple, list[dict]] = {}  # per host thread, the ops not inside another op, in time order
    for e in sorted((e for e in events if e.get("ph") == "X" and e.get("cat") in ("cpu_op", "user_annotation")),
                    key=lambda e: (e["ts"], -e["dur"])):
        ops = top_level.setdefault((e["pid"], e["tid"]), [])
        if not ops or e["ts"] >= ops[-1]["ts"] + ops[-1]["dur"]:
            ops.append(e)
    starts = {key: [o["ts"] for o in ops] for key, ops in top_level.items()}
    def phase(kernel: dict) -> str:
        launch = launches.get(kernel.get("args", {}).get("correlation"))
        if launch is None:
            return "(launch not in trace)"
        key = (launch["pid"], launch["tid"])
        i = bisect.bisect_right(starts.get(key, []), launch["ts"]) - 1
        op = top_level[key][i] if i >= 0 else None
        return op["name"] if op and launch["ts"] <= op["ts"] + op["dur"] else f"(outside host ops) {launch['name']}"
    phases: dict[str, dict] = {}
    busy_until = device[0]["ts"] if device else 0.0
    for kernel in device:
        start, end = kernel["ts"], kernel["ts"] + kernel["dur"]
        p = phases.setdefault(phase(kernel), dict(kernels=0, busy_us=0.0, idle_us=0.0))
        p["kernels"] += 1
        p["idle_us"] += max(0.0, start - busy_until)
        p["busy_us"] += max(0.0, end - max(start, busy_until))
        busy_until = max(busy_until, end)
    return phases


def build_trainer(preset: str, seq_len: int, tokens: int, overrides: list[str], d: tg.Dist,
                  train_files: str = "") -> tg.Trainer:
    """train_gpt's own Trainer for one preset, `tokens` per step in one micro-batch, on random tokens, or with
    train_files on real text through the trainer's own TrainLoader (its repeated tokens make the embedding
    backward's scatter-adds collide, which uniform random tokens do not)."""
    cfg = tg.load_config([f"model={preset}", "export=none", f"train.seq_len={seq_len}", f"train.global_batch_tokens={tokens}",
                          f"train.micro_batch_seqs={tokens // seq_len}"] + overrides)
    loader = (tg.TrainLoader(train_files, cfg.train, d, cfg.model.vocab_size) if train_files
              else RandomBatches(cfg.train, d, cfg.model.vocab_size))
    return tg.Trainer(cfg, d, loader)


def inductor_settings(extra: list[str]) -> dict:
    """`inductor.KEY=VALUE` tokens of a case as torch._inductor.config settings; an unknown KEY is an error."""
    settings = {}
    for token in (o for o in extra if o.startswith("inductor.")):
        key, equals, value = token.removeprefix("inductor.").partition("=")
        if not equals or not hasattr(inductor_config, key):
            raise ValueError(f"{token!r}: expected inductor.KEY=VALUE with KEY a torch._inductor.config setting")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value  # a bare word: a string setting, e.g. inductor.max_autotune_gemm_backends=TRITON
        current = getattr(inductor_config, key)
        if current is not None and type(parsed) is not type(current):
            raise ValueError(f"{token!r}: torch._inductor.config.{key} takes a {type(current).__name__} "
                             f"(now {current!r}), got {parsed!r}")
        settings[key] = parsed
    return settings


def bench_case(preset: str, seq_len: int, tokens: int, steps: int, warmup: int, extra: list[str], d: tg.Dist,
               peak_tflops: float, profile_path: str = "", train_files: str = "") -> dict:
    """One preset at one sequence length, built, warmed up and timed on its own; `extra` holds config overrides,
    `gdn_core=V`, `muon_ns=V` and `inductor.KEY=VALUE`."""
    case = prepare_case(preset, seq_len, tokens, warmup, extra, d, train_files)
    with gpu_sampling(d, case.setdefault("gpu_samples", []), case.setdefault("energy", [])):
        times_ms = time_steps(case["trainer"], steps, d)
    return finish_case(case, times_ms, tokens, peak_tflops, profile_path, train_files)


def cuda_times_ms(fn, reps: int) -> list[float]:
    """CUDA-event milliseconds of each of reps calls of fn, with one sync at the end."""
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def cuda_median_ms(fn, reps: int, warmup: int) -> float:
    """Median CUDA-event time of fn over reps calls after warmup calls: the timer of the component scripts
    (scripts/short_conv_bench.py, fused_mlp_bench.py, relu2_mm_explore.py)."""
    for _ in range(warmup):
        fn()
    return statistics.median(cuda_times_ms(fn, reps))


def interleaved_times_ms(calls: dict, rounds: int, reps: int = 30, warmup: int = 5) -> dict:
    """name -> each call's cuda_median_ms in `rounds` rounds, the calls one after another in every round, so that a
    drift over time touches every call alike (scripts/wy_bwd_explore.py, kkt_solve_explore.py)."""
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            times[name].append(cuda_median_ms(fn, reps, warmup))
    return times


def time_launches(calls: dict, rounds: int, prefix: str, label, summed: dict) -> None:
    """The explore scripts' launch sweep at one shape: `calls` (FLA's kernel as "fla", then one per launch setting)
    timed by interleaved_times_ms, each printed as '<prefix> <label(name)>: <spread>'; each launch's median is added to
    `summed`, so that best_launch picks over all shapes."""
    for name, ms in interleaved_times_ms(calls, rounds).items():
        print(f"{prefix} {label(name)}: {spread_us(ms)}", flush=True)
        if name != "fla":
            summed[name] = summed.get(name, 0.0) + statistics.median(ms)


def best_launch(summed: dict) -> str:
    """The launch setting with the least summed median time, as a 'best_launch:a,b,c' line."""
    return "best_launch:" + ",".join(map(str, min(summed, key=summed.get)))


def energy_per_call(fn, calls: int, read_joules) -> tuple[float, float]:
    """Millijoules per call of fn over `calls` calls back to back, and the mean watts meanwhile, from NVML's energy
    counter (read_joules, from energy_reader). The counter moves in steps of a few ms, so the calls should take ~1 s."""
    torch.cuda.synchronize()
    joules, t0 = read_joules(), time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    joules, seconds = read_joules() - joules, time.perf_counter() - t0
    return 1000 * joules / calls, joules / seconds


def spread_us(ms: list[float]) -> str:
    """A list of timings in ms as 'median M us (min A, max B)'."""
    return f"median {statistics.median(ms) * 1e3:.1f} us (min {min(ms) * 1e3:.1f}, max {max(ms) * 1e3:.1f})"


def prepare_case(preset: str, seq_len: int, tokens: int, warmup: int, extra: list[str], d: tg.Dist,
                 train_files: str) -> dict:
    """The case's trainer, compiled and autotuned by `warmup` steps, and the peak memory of one more step."""
    variant = next((o.split("=", 1)[1] for o in extra if o.startswith("gdn_core=")), None)
    muon_ns = next((o.split("=", 1)[1] for o in extra if o.startswith("muon_ns=")), None)
    for key, value, known in (("gdn_core", variant, CORE_VARIANTS), ("muon_ns", muon_ns, MUON_NS_VARIANTS)):
        if value is not None and value not in known:
            raise ValueError(f"variant {key}={value}: expected {key}= one of {sorted(known)}")
    # Memory other cases still hold (--interleave keeps every case of a length alive), subtracted from this one's peak.
    held_mib = torch.cuda.memory_allocated(d.device) / 2**20 if d.device.type == "cuda" else 0.0
    with inductor_config.patch(inductor_settings(extra)):  # compilation happens in the warm-up steps, inside
        trainer = build_trainer(preset, seq_len, tokens, [o for o in extra if not o.startswith(
            ("gdn_core=", "muon_ns=", "inductor."))], d, train_files)
        if muon_ns is not None:
            trainer.optimizers[0].ns = MUON_NS_VARIANTS[muon_ns]()
        for block in trainer.model.blocks if variant else []:
            if block.kind == "G":
                block.mixer.core = types.MethodType(CORE_VARIANTS[variant], block.mixer)
        t0 = time.perf_counter()
        for _ in range(warmup):  # compilation and autotuning (caches on disk from earlier cases may shorten it)
            trainer.train_step(1.0, 0.95, False)
        tg.synchronize(d)
        warmup_s = time.perf_counter() - t0
        if d.device.type == "cuda":  # one more step for the peak memory of a step, compilation done
            torch.cuda.reset_peak_memory_stats(d.device)
            trainer.train_step(1.0, 0.95, False)
            tg.synchronize(d)
    return dict(preset=preset, seq_len=seq_len, trainer=trainer, warmup_s=warmup_s,
                peak_mem_mib=tg.peak_memory_mib(d) - held_mib)


GPU_QUERY = "clocks.sm,power.draw,power.limit,clocks_throttle_reasons.active"  # nvidia-smi fields (checked: run LD)
POWER_CAP, SLOWDOWNS = 0x4, 0x8 | 0x20 | 0x40 | 0x80  # NVML clock-limit reasons: software power cap; HW and thermal


def parse_gpu_samples(text: str) -> list[tuple]:
    """nvidia-smi's `--format=csv,noheader,nounits` lines of GPU_QUERY -> (sm_mhz, power_w, power_limit_w, reasons);
    a field the GPU does not report ([N/A]) is None."""
    samples = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        try:
            if len(fields) != 4:
                raise ValueError
            mhz, watts, limit = (None if f.startswith("[") else float(f) for f in fields[:3])
            samples.append((mhz, watts, limit, None if fields[3].startswith("[") else int(fields[3], 16)))
        except ValueError:
            raise ValueError(f"nvidia-smi --query-gpu={GPU_QUERY}: cannot read the line {line!r} (expected 4 "
                             "comma-separated fields: MHz, W, W, hex reasons)") from None
    return samples


def nvml_index(device: torch.device) -> str:
    """The GPU's index for nvidia-smi and NVML, which count every GPU where torch counts only CUDA_VISIBLE_DEVICES
    (an entry there may also be a GPU-<uuid>, which both take as it is)."""
    visible, ordinal = os.environ.get("CUDA_VISIBLE_DEVICES", ""), device.index or 0
    return visible.split(",")[ordinal].strip() if visible else str(ordinal)


NVML = {}  # "reader": energy_reader's answer, made once (one GPU a process)


def energy_reader(index: str):
    """() -> the GPU's energy counter in joules (NVML's millijoules since the driver loaded), read by nvidia-ml-py; or
    None, after one line saying why (no nvidia-ml-py, or a GPU without the counter: pre-Volta)."""
    if "reader" not in NVML:
        NVML["reader"], off = open_energy_counter(index)
        if off:
            print(f"bench energy:off ({off}): rows carry no joules per step", flush=True)
    return NVML["reader"]


def open_energy_counter(index: str):
    """(reader, "") for the GPU's energy counter, or (None, why it cannot be read)."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except ImportError:
        return None, "no pynvml: pip install nvidia-ml-py"
    except Exception as e:  # pynvml.NVMLError: no NVML library, or a driver that does not answer
        return None, f"NVML: {e}"
    try:
        handle = (pynvml.nvmlDeviceGetHandleByUUID(index) if index.startswith(("GPU-", "MIG-"))
                  else pynvml.nvmlDeviceGetHandleByIndex(int(index)))
        pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except pynvml.NVMLError as e:
        return None, f"GPU {index}: NVML total energy: {e}"
    return (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0), ""


@contextlib.contextmanager
def gpu_sampling(d: tg.Dist | None, samples: list, energy: list | None = None, interval_ms: int = 100):
    """The GPU's SM clock, power draw and clock-limit reasons sampled by nvidia-smi while the block runs (the timed
    steps), appended to `samples`; and (joules, seconds) of the block from NVML's energy counter appended to `energy`.
    On an H200 the anchor's step ran at the 700 W power cap with the SM clock pulled down to ~1.8 of 1.98 GHz
    (docs/perf.md run LD): a kernel timed alone runs at the full clock, so its gain need not show in the step. The
    counter gives the block's exact energy, where nvidia-smi's power.draw is a 1 s average that lags a short block.
    The block must leave the GPU idle at both ends (time_steps synchronizes). Nothing on CPU; without nvidia-smi or
    nvidia-ml-py a line says which figures the rows lack."""
    if d is None or d.device.type != "cuda":
        yield
        return
    index = nvml_index(d.device)
    read_joules = energy_reader(index) if energy is not None else None
    try:
        proc = subprocess.Popen(["nvidia-smi", f"--query-gpu={GPU_QUERY}", "--format=csv,noheader,nounits", "-lms",
                                 str(interval_ms), "-i", index], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except FileNotFoundError:
        print("bench gpu_sampling:off (no nvidia-smi on PATH: rows carry no clock or power samples)", flush=True)
        proc = None
    joules, t0 = read_joules() if read_joules else None, time.perf_counter()
    try:
        yield
    finally:
        if read_joules:
            energy.append((read_joules() - joules, time.perf_counter() - t0))
        if proc is not None:
            died = proc.poll()
            proc.terminate()
            out, err = proc.communicate(timeout=30)
            if died is not None:
                raise RuntimeError(f"nvidia-smi -i {index} exited with {died} while sampling: {err.strip()[-500:]}")
            samples += parse_gpu_samples(out)


def summarize_gpu_samples(samples: list[tuple]) -> dict:
    """Median SM clock and power draw over a case's samples, and the share of samples whose clock was held down by
    the power cap (power_capped) or by a hardware or thermal slowdown."""
    def median(i):
        values = [s[i] for s in samples if s[i] is not None]
        return statistics.median(values) if values else None
    reasons = [s[3] for s in samples if s[3] is not None]
    share = lambda bits: sum(bool(r & bits) for r in reasons) / len(reasons) if reasons else None  # noqa: E731
    return dict(gpu_samples=len(samples), sm_mhz=median(0), power_w=median(1), power_limit_w=median(2),
                power_capped=share(POWER_CAP), slowdown=share(SLOWDOWNS))


def summarize_energy(energy: list[tuple[float, float]], steps: int) -> dict:
    """Joules per timed step, and the mean power over the timed stretches, from NVML's energy counter. Under a power
    cap (docs/perf.md run LD) a step's time should follow its energy, so two presets at the cap compare by joules."""
    if not energy:
        return dict(joules_per_step=None, energy_power_w=None)
    joules, seconds = (sum(column) for column in zip(*energy))
    return dict(joules_per_step=joules / steps, energy_power_w=joules / seconds)


def time_steps(trainer: tg.Trainer, steps: int, d: tg.Dist) -> list[float]:
    """Milliseconds of each of `steps` training steps: CUDA events on a GPU (one sync at the end), wall time on CPU."""
    if d.device.type == "cuda":
        return cuda_times_ms(lambda: trainer.train_step(1.0, 0.95, False), steps)
    times_ms = []
    for _ in range(steps):
        t0 = time.perf_counter()
        trainer.train_step(1.0, 0.95, False)
        times_ms.append(1000 * (time.perf_counter() - t0))
    return times_ms


def finish_case(case: dict, times_ms: list[float], tokens: int, peak_tflops: float, profile_path: str,
                train_files: str) -> dict:
    """The case's result row from its step times (the median), after its profile if one is asked for."""
    trainer, seq_len = case["trainer"], case["seq_len"]
    if profile_path:
        write_profile(trainer, profile_path)
    cfg, ms = trainer.cfg, statistics.median(times_ms)
    flops = flops_per_token(cfg.model, seq_len)
    tok_s = tokens / (ms / 1000)
    return dict(preset=case["preset"], layout=cfg.model.layout, seq_len=seq_len, tokens_per_step=tokens,
                tokens_from=train_files or "random",
                params=sum(p.numel() for p in trainer.model.parameters()), ms_per_step=ms,
                ms_spread=[min(times_ms), max(times_ms)], warmup_s=case["warmup_s"], tok_per_s=tok_s,
                peak_mem_mib=case["peak_mem_mib"], flops_per_token=flops,
                mfu=tok_s * sum(flops.values()) / (peak_tflops * 1e12), **summarize_gpu_samples(case.get("gpu_samples", [])),
                **summarize_energy(case.get("energy", []), len(times_ms)))


def interleaved_cases(cases: list[tuple[str, str]], seq_len: int, tokens: int, steps: int, warmup: int, rounds: int,
                      extra: list[str], d: tg.Dist, peak_tflops: float, profile_dir: str, train_files: str) -> list[dict]:
    """Every (preset, variant) case of one length built and warmed up together, then timed in `rounds` rounds of
    `steps` steps each, case after case: a slow drift of the GPU's speed (docs/perf.md run FD) then touches every
    case alike instead of whichever ran last. Each row's ms/step is the median over all its steps; `round_ms` holds
    its per-round medians, whose spread says how far to trust a difference."""
    # Live cases compile the same code objects under different guards: past dynamo's recompile limit a case would
    # silently run eager, so that is an error here.
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        prepared = [prepare_case(preset, seq_len, tokens, warmup, extra + variant.split(), d, train_files)
                    for preset, variant in cases]
        times: list[list[float]] = [[] for _ in cases]
        round_ms: list[list[float]] = [[] for _ in cases]
        for _ in range(rounds):
            for i, case in enumerate(prepared):
                with gpu_sampling(d, case.setdefault("gpu_samples", []), case.setdefault("energy", [])):
                    step_ms = time_steps(case["trainer"], steps, d)
                times[i] += step_ms
                round_ms[i].append(statistics.median(step_ms))
        rows = []
        for (preset, variant), case, ms, per_round in zip(cases, prepared, times, round_ms):
            rows.append(dict(finish_case(case, ms, tokens, peak_tflops,
                                         case_profile_path(profile_dir, preset, seq_len, variant), train_files),
                             round_ms=per_round))
    return rows


def case_profile_path(profile_dir: str, preset: str, seq_len: int, variant: str) -> str:
    """Where --profile-dir puts a case's profile table; "" without --profile-dir."""
    tag = f"{preset}_{seq_len}" + ("_" + variant.replace(" ", "_").replace("=", "-") if variant else "")
    return f"{profile_dir}/profile_{tag}.txt" if profile_dir else ""


def add_ratios(rows: list[dict], baseline: str) -> None:
    """Each row's tok/s over the baseline preset's at the same sequence length and variant (issue 7's targets are such
    ratios, e.g. gdn_hybrid / attention at 8192), as row["vs_baseline"]; None where the baseline was not run."""
    base = {(r["seq_len"], r["variant"]): r["tok_per_s"] for r in rows if r["preset"] == baseline}
    for r in rows:
        b = base.get((r["seq_len"], r["variant"]))
        r["vs_baseline"] = None if b is None else r["tok_per_s"] / b


def report_row(r: dict) -> None:
    rounds = " round_ms:" + ",".join(f"{ms:.2f}" for ms in r["round_ms"]) if "round_ms" in r else ""
    gpu = "".join(f" {k}:{'-' if r.get(k) is None else f'{r[k]:.2f}' if k in ('power_capped', 'slowdown') else f'{r[k]:.0f}'}"
                  for k in ("gpu_samples", "sm_mhz", "power_w", "power_limit_w", "power_capped", "slowdown")) if r.get("gpu_samples") else ""
    if r.get("joules_per_step") is not None:
        gpu += f" joules_per_step:{r['joules_per_step']:.2f} energy_power_w:{r['energy_power_w']:.0f}"
    print(f"bench preset:{r['preset']} seq_len:{r['seq_len']} variant:{r['variant'] or '-'} tokens:{r['tokens_from']} "
          f"tok/s:{r['tok_per_s']:.0f} ms/step:{r['ms_per_step']:.2f} peak_mem_mib:{r['peak_mem_mib']:.0f} "
          f"mfu:{100 * r['mfu']:.1f}% warmup_s:{r['warmup_s']:.1f}{rounds}{gpu}", flush=True)


def release_compiled(d: tg.Dist) -> None:
    """Drop dynamo's compiled code and the allocator's cached blocks between cases (or lengths, interleaved)."""
    torch._dynamo.reset()
    if d.device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["gdn_hybrid", "gdn_hybrid_lean", "attention", "pure_gdn"])
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[2048, 4096, 8192])
    parser.add_argument("--tokens-per-step", type=int, default=98304, help="per GPU (the 8-GPU recipe's share)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    parser.add_argument("--out", default="")
    parser.add_argument("--baseline", default=None, help="the preset each row's tok/s is divided by in the summary's "
                        "last column (default: attention, where it is among the presets)")
    parser.add_argument("--profile-dir", default="", help="write a torch.profiler table per case here")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, 2 steps (for CI)")
    parser.add_argument("--train-files", default="", metavar="PATTERN",
                        help="time on these shards' tokens (the trainer's TrainLoader) instead of random tokens")
    parser.add_argument("--variants", nargs="+", default=[""],
                        help="override sets compared side by side; gdn_core=fla_function swaps in an earlier GDN path "
                             "(see CORE_VARIANTS), muon_ns=launched|eager|separate_sums an earlier Newton-Schulz "
                             "(MUON_NS_VARIANTS), "
                             "inductor.KEY=VALUE sets torch._inductor.config.KEY for the case, "
                             "e.g. --variants '' gdn_core=fla_function inductor.max_autotune_gemm=True")
    parser.add_argument("--short-conv-tiles", default="", metavar=",".join(SHORT_CONV_TILES),
                        help="tile setting of train_gpt.ShortConv's kernels, as scripts/short_conv_bench.py prints it")
    parser.add_argument("--interleave", type=int, default=0, metavar="ROUNDS",
                        help="keep every case of a length alive and time them in ROUNDS rounds of --steps steps, case "
                             "after case, so that drift over time touches them alike (for differences under ~1%%)")
    parser.add_argument("overrides", nargs="*", help="extra config overrides for every case, e.g. model.kernel=torch")
    args = parser.parse_args()
    extra = list(args.overrides)
    if args.baseline is not None and args.baseline not in args.presets:
        parser.error(f"--baseline {args.baseline}: expected one of the presets run ({' '.join(args.presets)})")
    baseline = args.baseline or "attention"
    if args.interleave < 0:
        parser.error(f"--interleave {args.interleave}: expected a number of rounds >= 1 (or 0: cases one after another)")
    if args.short_conv_tiles:
        values = args.short_conv_tiles.split(",")
        if len(values) != len(SHORT_CONV_TILES) or not all(v.isdigit() and int(v) > 0 for v in values):
            parser.error(f"--short-conv-tiles {args.short_conv_tiles!r}: expected {len(SHORT_CONV_TILES)} positive "
                         f"integers {','.join(SHORT_CONV_TILES)}, e.g. 32,1,32,2,32,8,2")
        set_short_conv_tiles(values)
    if args.cpu_smoke:
        args.seq_lens, args.tokens_per_step, args.steps, args.warmup = [64, 128], 512, 2, 1
        extra = ["budget=cpu_smoke", "model.vocab_size=512"] + extra
    d = tg.init_distributed()
    rows = []
    for seq_len in args.seq_lens:
        cases = [(p, v) for p in args.presets for v in args.variants]
        if args.interleave:
            group = interleaved_cases(cases, seq_len, args.tokens_per_step, args.steps, args.warmup, args.interleave,
                                      extra, d, args.peak_tflops, args.profile_dir, args.train_files)
            for r, (_, variant) in zip(group, cases):
                r["variant"] = variant
                report_row(r)
            release_compiled(d)
        else:
            group = []
            for preset, variant in cases:
                group.append(dict(bench_case(preset, seq_len, args.tokens_per_step, args.steps, args.warmup,
                                             extra + variant.split(), d, args.peak_tflops,
                                             case_profile_path(args.profile_dir, preset, seq_len, variant),
                                             args.train_files), variant=variant))
                report_row(group[-1])
                release_compiled(d)
        rows += group
    device = torch.cuda.get_device_name() if d.device.type == "cuda" else "CPU"
    add_ratios(rows, baseline)
    print(f"\n| preset | seq_len | variant | tok/s | ms/step | peak MiB | MFU | vs {baseline} | SM MHz (power-capped) | J/step (W) |  ({device})\n"
          f"|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "-" if r["vs_baseline"] is None else f"{r['vs_baseline']:.3f}x"
        clock = "-" if r.get("sm_mhz") is None else f"{r['sm_mhz']:.0f}" + (
            "" if r.get("power_capped") is None else f" ({100 * r['power_capped']:.0f}%)")
        energy = "-" if r.get("joules_per_step") is None else f"{r['joules_per_step']:.2f} ({r['energy_power_w']:.0f})"
        print(f"| {r['preset']} | {r['seq_len']} | {r['variant'] or '-'} | {r['tok_per_s']:,.0f} | {r['ms_per_step']:.1f} | "
              f"{r['peak_mem_mib']:,.0f} | {100 * r['mfu']:.1f}% | {ratio} | {clock} | {energy} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(device=device, torch=torch.__version__, baseline=baseline, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()

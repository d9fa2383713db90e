"""Time the host-side tail of a training step on its own: gradient clipping, each optimizer's step, zero_grad and
the EMA update, as train_gpt.Trainer.train_step runs them, for one preset.

For each part it prints the GPU time (CUDA events around the part, launched behind a 50 ms GPU sleep so that the host
has queued all of it before the GPU starts: device time only, median of --reps) and the host time to issue it
(perf_counter around the call). A part whose host time exceeds its GPU time starves the GPU unless the step's
earlier kernels are still queued.

    python scripts/optimizer_bench.py --preset gdn_hybrid_lean --seq-len 8192
    python scripts/optimizer_bench.py --preset gdn_hybrid --seq-len 2048 --whole-step --sleep-ms 300

--whole-step times the whole train_step instead: host time below its GPU time means the GPU never waits for the host
in back-to-back steps. The sleep must outlast the host's issuing, or the host time includes waiting for a full launch
queue; a host time near the sleep is flagged.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
import train_gpt as tg  # noqa: E402


def tail_parts(trainer: tg.Trainer) -> dict:
    """The step's parts after the backward, in train_step's order, each a function of no arguments."""
    parts = {}
    if trainer.cfg.train.grad_clip_norm > 0:
        parts["clip_grad_norm"] = lambda: torch.nn.utils.clip_grad_norm_(trainer.params, trainer.cfg.train.grad_clip_norm)
    for opt in trainer.optimizers:
        parts[f"{type(opt).__name__}.step"] = opt.step
    if trainer.ema is not None:
        parts["ema"] = lambda: torch._foreach_lerp_(trainer.ema, [p.detach().float() for p in trainer.params], 0.01)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="gdn_hybrid_lean")
    parser.add_argument("--seq-len", type=int, default=8192)
    parser.add_argument("--tokens-per-step", type=int, default=98304)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--whole-step", action="store_true", help="time the whole train_step, not its tail's parts")
    parser.add_argument("--sleep-ms", type=float, default=50.0, help="GPU sleep queued ahead of each timed call")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU: it times with CUDA events behind a GPU sleep")
    d = tg.init_distributed()
    trainer = bench.build_trainer(args.preset, args.seq_len, args.tokens_per_step, args.overrides, d)
    for _ in range(3):  # compile, autotune, optimizer state
        trainer.train_step(1.0, 0.95, False)
    x, y = trainer.loader.next_batch()[0]
    with tg.autocast(d):
        trainer.model(x, y).backward()  # gradients to step on; the parts below do not clear them
    parts = {"train_step": lambda: trainer.train_step(1.0, 0.95, False)} if args.whole_step else tail_parts(trainer)
    for name, fn in parts.items():
        gpu, host = [], []
        for _ in range(args.reps + 3):
            tg.synchronize(d)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda._sleep(int(2e6 * args.sleep_ms))  # ~2e6 GPU clock cycles a ms
            start.record()
            t0 = time.perf_counter()
            fn()
            host.append(1000 * (time.perf_counter() - t0))
            end.record()
            tg.synchronize(d)
            gpu.append(start.elapsed_time(end))
        gpu_ms, host_ms = statistics.median(gpu[3:]), statistics.median(host[3:])
        print(f"optimizer_bench preset:{args.preset} seq_len:{args.seq_len} part:{name} gpu_ms:{gpu_ms:.3f} "
              f"host_ms:{host_ms:.3f}" + (" host_near_sleep:raise --sleep-ms" if host_ms > 0.8 * args.sleep_ms else ""),
              flush=True)
    if args.whole_step:  # the same steps back to back, as bench.py times them: above gpu_ms is time the GPU waited
        back_to_back = statistics.median(bench.cuda_times_ms(parts["train_step"], args.reps))
        print(f"optimizer_bench preset:{args.preset} seq_len:{args.seq_len} back_to_back_ms:{back_to_back:.3f}", flush=True)


if __name__ == "__main__":
    main()

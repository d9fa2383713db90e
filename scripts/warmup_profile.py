"""Where the trainer's warm-up goes, by phase: FLA/Triton kernel compilation and autotuning (the first eager step),
then torch.compile (the first compiled step), then the steps after it, on random tokens at the 8-GPU recipe's
per-GPU batch. Run it twice with the same --cache-dir to see what the on-disk caches save on a second launch.

    python scripts/warmup_profile.py --cache-dir /tmp/warm --preset gdn_hybrid     # cold caches (a fresh directory)
    python scripts/warmup_profile.py --cache-dir /tmp/warm --preset gdn_hybrid     # warm caches (same directory)
    python scripts/warmup_profile.py --cache-dir /tmp/smoke --cpu-smoke            # tiny model on CPU (for CI)

Prints `warmup key:value` lines; the dynamo/inductor phase table of torch._dynamo.utils.compile_times() follows."""
import argparse
import os
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", required=True, type=Path, help="Triton and inductor caches go here")
    parser.add_argument("--preset", default="gdn_hybrid")
    parser.add_argument("--seq-len", type=int, default=None, help="default 2048 (64 with --cpu-smoke)")
    parser.add_argument("--compiled-steps", type=int, default=5)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model on CPU (torch kernels, inductor's C++)")
    args = parser.parse_args()
    args.seq_len = args.seq_len or (64 if args.cpu_smoke else 2048)  # the smoke step holds 512 tokens
    cold = not any(args.cache_dir.glob("*/*"))  # nothing cached yet in its triton/ or inductor/ directory
    # before torch and Triton are imported: they read these once
    os.environ["TRITON_CACHE_DIR"] = str(args.cache_dir / "triton")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(args.cache_dir / "inductor")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch
    import train_gpt as tg
    from bench import build_trainer

    d = tg.init_distributed()
    if d.device.type != "cuda" and not args.cpu_smoke:
        raise SystemExit("warmup_profile.py: no CUDA device: the warm-up it profiles is the GPU path's (--cpu-smoke "
                         "runs a tiny model on CPU)")
    tokens, smoke = (512, ["budget=cpu_smoke", "model.vocab_size=512", "model.layout=GA"]) if args.cpu_smoke else (98304, [])

    def trainer(compile_mode: str) -> tg.Trainer:
        return build_trainer(args.preset, args.seq_len, tokens, [f"train.compile={compile_mode}"] + smoke, d)

    def timed_step(t: tg.Trainer) -> float:
        t0 = time.perf_counter()
        t.train_step(1.0, 0.95, False)
        tg.synchronize(d)
        return time.perf_counter() - t0

    print(f"warmup preset:{args.preset} seq_len:{args.seq_len} caches:{'cold' if cold else 'warm'} dir:{args.cache_dir}")
    start = time.perf_counter()
    eager = trainer("off")
    first, second = timed_step(eager), timed_step(eager)
    print(f"warmup phase:eager_first_step seconds:{first:.1f} (on CUDA: Triton JIT of the short conv and FLA kernels, FLA autotuning)")
    print(f"warmup phase:eager_second_step seconds:{second:.2f}")
    del eager
    compiled = trainer("whole")
    times = [timed_step(compiled) for _ in range(args.compiled_steps)]
    print(f"warmup phase:compiled_first_step seconds:{times[0]:.1f} (dynamo, AOT autograd, inductor, its Triton kernels)")
    print(f"warmup phase:compiled_next_steps seconds:{' '.join(f'{s:.2f}' for s in times[1:])}")
    print(f"warmup total_seconds:{time.perf_counter() - start:.1f}")
    print(torch._dynamo.utils.compile_times(repr="str"))


if __name__ == "__main__":
    main()

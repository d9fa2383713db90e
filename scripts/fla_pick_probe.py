"""Which launch config FLA's autotuner keeps for the trainer's eight chunk kernels, and its time at the trainer's shape
(12 x 8192), when the first call of the process had another shape. FLA's autotune keys hold head counts and dims but no
length, and Triton keeps each pick in its cache directory (FLA_CACHE_RESULTS=1, FLA's default), so a pick made on a small
input (a test, a quick run) is what every later process on the machine gets, at any length. train_gpt turns that
off (FLA_CACHE_RESULTS=0 unless set), so this shows the effect only with FLA_CACHE_RESULTS=1 (docs/perf.md run HE):

    export TRITON_CACHE_DIR=/tmp/probe_cache
    FLA_CACHE_RESULTS=1 python scripts/fla_pick_probe.py --first 1,64   # tune on 64 tokens, then time at 12 x 8192
    FLA_CACHE_RESULTS=1 python scripts/fla_pick_probe.py                # a later process: loads those picks
    python scripts/fla_pick_probe.py                                    # train_gpt's default: tunes at 12 x 8192
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fla_config_sweep import autotuner, describe, kernels, layer_inputs  # noqa: E402
from bench import cuda_median_ms  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", default="12,8192", help="B,T of the first call of every kernel")
    args = parser.parse_args()
    B, T = (int(n) for n in args.first.split(","))
    table, first = kernels(), layer_inputs(B, T)
    for _, call, _ in table.values():
        call(first)
    x = layer_inputs(12, 8192)
    total = 0.0
    for name, (kernel, call, _) in table.items():
        pick = next(iter(autotuner(kernel).cache.values()))
        us = cuda_median_ms(lambda: call(x), 30, warmup=5) * 1e3
        total += us
        print(f"probe first={B}x{T} {name}: {describe(pick)} {us:.1f} us at 12x8192", flush=True)
    print(f"probe first={B}x{T} all eight: {total:.1f} us a layer at 12x8192 "
          f"(FLA_CACHE_RESULTS={os.environ.get('FLA_CACHE_RESULTS')})")


if __name__ == "__main__":
    main()

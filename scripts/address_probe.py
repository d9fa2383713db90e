"""Does an FLA kernel's time depend on where its output lands in memory? The same call (FLA's own config, the same
inputs) is timed with a pad tensor of varying size allocated before it, which moves the output the function allocates
to another address; the rounds are interleaved, so a drift in time is not mistaken for an address effect.
    python scripts/address_probe.py [--kernels bwd_dv_local bwd_dhu wy_bwd] [--rounds 3]"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import cuda_median_ms  # noqa: E402
from fla_config_sweep import KERNEL_NAMES, SHAPES, kernels, layer_inputs  # noqa: E402

PADS = [0, 512, 4096, 65536] + [mib << 20 for mib in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", nargs="+", choices=KERNEL_NAMES, default=["bwd_dv_local", "bwd_dhu", "wy_bwd"])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    B, T = SHAPES[0]
    x, table = layer_inputs(B, T), kernels()
    for name in args.kernels:
        call = table[name][1]
        call(x)  # FLA autotunes once, before any timing
        times = {pad: [] for pad in PADS}
        where = {}
        for _ in range(args.rounds):
            for pad in PADS:
                keep = torch.empty(pad, dtype=torch.uint8, device="cuda")
                out = call(x)
                where[pad] = (out[0] if isinstance(out, (tuple, list)) else out).data_ptr()
                del out
                times[pad].append(cuda_median_ms(lambda: call(x), 30, warmup=5))
                del keep
        for pad in PADS:
            ms = times[pad]
            print(f"{name} {B}x{T} pad {pad:>9} B: output at +{where[pad] % (1 << 30):>10} (mod 1 GiB, "
                  f"mod 2 MiB {where[pad] % (1 << 21):>7}): median {statistics.median(ms) * 1e3:.1f} us, "
                  f"rounds {' '.join(f'{m * 1e3:.1f}' for m in ms)}", flush=True)


if __name__ == "__main__":
    main()

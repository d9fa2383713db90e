"""The GDN short conv alone, forward + backward, at the trainer's shape (CUDA events, median of 50 after warm-up):
FLA's causal_conv1d + split copies + FLA's L2 norm against train_gpt.ShortConv at several tile settings of its
kernels, and optionally another version of train_gpt.py (--compare FILE, e.g. an older commit's copy) in the same
process. Random bf16 inputs.   python scripts/short_conv_bench.py [--compare old_train_gpt.py] [--conv-size W]
--conv-size 0 times the lean layer's pass (SiLU and L2 norm only, no dx pass; FLA's path is then not timed)."""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402
from bench import SHORT_CONV_TILES, cuda_median_ms, load_train_gpt_copy, set_short_conv_tiles  # noqa: E402


def time_ms(fn, reps: int = 50) -> float:
    return cuda_median_ms(fn, reps, warmup=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", type=Path, help="another train_gpt.py whose ShortConv is timed beside this one")
    parser.add_argument("--conv-size", type=int, default=4, choices=range(0, 9), metavar="W",
                        help="conv taps, as model.conv_size (default 4; 0: the lean layer's SiLU + L2 norm pass)")
    args = parser.parse_args()
    from fla.modules.convolution import causal_conv1d
    from fla.modules.norm.l2norm import l2norm
    B, T, H, K, V, W = 48, 2048, 8, 64, 64, args.conv_size
    D = 2 * H * K + H * V
    proj = torch.randn(B, T, D + 2 * H, device="cuda", dtype=torch.bfloat16)  # q|k|v|a|b as in the model
    x = proj[..., :D]
    w = torch.randn(D, W, device="cuda") * 0.5
    grads = [torch.randn(B, T, H, n, device="cuda", dtype=torch.bfloat16) for n in (K, K, V)]
    dk2, dx = torch.randn_like(grads[1]), torch.empty_like(proj)[..., :D]  # FLA's second dk term; dx a column slice

    def fla_path():
        xr = x.detach().requires_grad_()
        y, _ = causal_conv1d(xr, w.to(x.dtype), activation="silu")
        q, k, v = y.split([H * K, H * K, H * V], dim=-1)
        outs = (l2norm(q.reshape(B, T, H, K).contiguous()), l2norm(k.reshape(B, T, H, K).contiguous()),
                v.reshape(B, T, H, V).contiguous())
        torch.autograd.backward(outs, [grads[0], grads[1] + dk2, grads[2]])

    def harness(conv):  # the trainer's calls: forward, then backward from the kept input with both dk terms
        return lambda: (conv.forward(x, w, None, (H, K, V)), conv.backward(x, w, None, (H, K, V), grads, dx, False, dk2))

    def backward(conv):  # the backward alone, from the kept input
        return lambda: conv.backward(x, w, None, (H, K, V), grads, dx, False, dk2)

    gb = 2 * B * T * D * 2 / 1e9  # one read of x and one write of q|k|v, bf16
    print(f"short_conv B={B} T={T} D={D} W={W}: bytes of one x read + one q|k|v write = {gb:.2f} GB")
    if W:
        print(f"short_conv fla (conv + copies + l2norm) fwd+bwd: {time_ms(fla_path):.3f} ms")
    if args.compare:
        other = load_train_gpt_copy(args.compare, "compared_train_gpt")
        print(f"short_conv {args.compare} fwd+bwd: {time_ms(harness(other.ShortConv)):.3f} ms, "
              f"backward only: {time_ms(backward(other.ShortConv)):.3f} ms")
    names, state = ",".join(SHORT_CONV_TILES).lower(), torch.randn(B, D, W, device="cuda")
    best = (float("inf"), tuple(getattr(tg.ShortConv, n) for n in SHORT_CONV_TILES))
    rows_warps = [(rows, warps) for rows in (16, 32, 64, 128) for warps in (1, 2, 4, 8)]
    dx_settings = [(32, 8, 2), (64, 4, 4), (32, 16, 4), (16, 16, 2), (128, 2, 4), (64, 1, 4), (128, 1, 8), (32, 2, 2)]
    # one pass at a time (forward, du pass, dx pass), the others at the best setting so far; the default first
    parts = [(slice(0, 0), [()]), (slice(0, 2), rows_warps), (slice(2, 4), rows_warps)] + [(slice(4, 7), dx_settings)] * (W > 0)
    for part, options in parts:  # W = 0 has no dx pass
        for option in options:
            setting = list(best[1])
            setting[part] = option
            set_short_conv_tiles(setting)
            try:  # the backward with a carried state must compile at this setting too
                tg.ShortConv.backward(x, w, state, (H, K, V), grads, dx, True, dk2)
                ms = time_ms(harness(tg.ShortConv))
            except Exception as error:  # noqa: BLE001 (a setting out of the GPU's resources is reported, not fatal)
                print(f"short_conv {names}={tuple(setting)}: {type(error).__name__}: {str(error)[:200]}")
                continue
            best = min(best, (ms, tuple(setting)))
            print(f"short_conv {names}={tuple(setting)} fwd+bwd: {ms:.3f} ms")
    print(f"short_conv best {names}: {best[1]}")
    set_short_conv_tiles(best[1])
    print(f"short_conv forward only: {time_ms(lambda: tg.ShortConv.forward(x, w, None, (H, K, V))):.3f} ms, "
          f"backward only: {time_ms(backward(tg.ShortConv)):.3f} ms")


if __name__ == "__main__":
    main()

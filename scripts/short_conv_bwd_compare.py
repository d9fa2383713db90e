"""The short conv's backward (du pass + dx pass) of this train_gpt.py against another version's, at the trainer's
shapes (48 x 2048 and 12 x 8192 tokens, 1,536 channels, bf16, dx into a column slice as gdn_core_bwd writes it),
for a few dx tile settings of this version, timed interleaved (bench.interleaved_times_ms). Also prints each
setting's relative difference in dx and dw from the other version.
    git show e7e8982:train_gpt.py > /tmp/old_train_gpt.py && python scripts/short_conv_bwd_compare.py /tmp/old_train_gpt.py"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: E402
import train_gpt as tg  # noqa: E402

DX_SETTINGS = [(32, 8, 2), (32, 8, 4), (16, 16, 2), (16, 16, 4)]  # DX_ROWS, DX_TILES, DX_WARPS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other train_gpt.py, e.g. an older commit's copy")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    other = bench.load_train_gpt_copy(args.other)
    H, K, V, W = 8, 64, 64, 4
    D = 2 * H * K + H * V
    for B, T in ((48, 2048), (12, 8192)):
        proj = torch.randn(B, T, D + 2 * H + 512, device="cuda", dtype=torch.bfloat16)
        x, w = proj[..., :D], torch.randn(D, W, device="cuda") * 0.5
        grads = [torch.randn(B, T, H, n, device="cuda", dtype=torch.bfloat16) for n in (K, K, V)]
        dk2, dx = torch.randn_like(grads[1]), torch.empty_like(proj)[..., :D]
        dw_ref, dx_ref = other.ShortConv.backward(x, w, None, (H, K, V), grads, dx, False, dk2)[0], dx.clone()
        calls = {"other": lambda: other.ShortConv.backward(x, w, None, (H, K, V), grads, dx, False, dk2)}

        def this_version(setting):
            def backward():
                tg.ShortConv.DX_ROWS, tg.ShortConv.DX_TILES, tg.ShortConv.DX_WARPS = setting
                return tg.ShortConv.backward(x, w, None, (H, K, V), grads, dx, False, dk2)
            return backward

        for setting in DX_SETTINGS:
            dw = this_version(setting)()[0]
            err = max(((dx - dx_ref).float().norm() / dx_ref.float().norm()).item(),
                      ((dw.float() - dw_ref.float()).norm() / dw_ref.float().norm()).item())
            calls[f"this {setting}"] = this_version(setting)
            print(f"short_conv_bwd B={B} T={T} this {setting}: relative difference from the other {err:.2e}", flush=True)
        for name, ms in bench.interleaved_times_ms(calls, rounds=args.rounds).items():
            print(f"short_conv_bwd B={B} T={T} {name}: backward (du + dx) {bench.spread_us(ms)}", flush=True)


if __name__ == "__main__":
    main()

"""The GDN short conv alone, forward + backward, at the trainer's shape (CUDA events, median of 50 after warm-up):
FLA's causal_conv1d + split copies + FLA's L2 norm (train_gpt's path before the fused kernel) against
train_gpt.ShortConv (through bench.ShortConvFunction) at several tile settings. Random bf16 inputs.   python scripts/short_conv_bench.py"""
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: E402
import train_gpt as tg  # noqa: E402


def time_ms(fn, reps: int = 50) -> float:
    for _ in range(5):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def main() -> None:
    from fla.modules.convolution import causal_conv1d
    from fla.modules.norm.l2norm import l2norm
    B, T, H, K, V, W = 48, 2048, 8, 64, 64, 4
    D = 2 * H * K + H * V
    proj = torch.randn(B, T, D + 2 * H + H * V, device="cuda", dtype=torch.bfloat16)  # q|k|v|gate|a|b as in the model
    x = proj[..., :D].detach().requires_grad_()
    w = (torch.randn(D, W, device="cuda") * 0.5).requires_grad_()
    grads = [torch.randn(B, T, H, n, device="cuda", dtype=torch.bfloat16) for n in (K, K, V)]

    def fla_path():
        y, _ = causal_conv1d(x, w.to(x.dtype), activation="silu")
        q, k, v = y.split([H * K, H * K, H * V], dim=-1)
        outs = (l2norm(q.reshape(B, T, H, K).contiguous()), l2norm(k.reshape(B, T, H, K).contiguous()),
                v.reshape(B, T, H, V).contiguous())
        torch.autograd.backward(outs, grads)

    def fused():
        torch.autograd.backward(bench.ShortConvFunction.apply(x, w, None, (H, K, V)), grads)

    gb = 2 * B * T * D * 2 / 1e9  # one read of x and one write of q|k|v, bf16
    print(f"short_conv B={B} T={T} D={D}: bytes of one x read + one q|k|v write = {gb:.2f} GB")
    print(f"short_conv fla (conv + copies + l2norm) fwd+bwd: {time_ms(fla_path):.3f} ms")
    best = (float("inf"), None)
    for rows, tiles, warps in [(32, 8, 2), (64, 4, 4), (32, 16, 4), (64, 8, 4), (16, 16, 2), (128, 2, 4)]:
        tg.ShortConv.DX_ROWS, tg.ShortConv.DX_TILES, tg.ShortConv.DX_WARPS = rows, tiles, warps
        ms = time_ms(fused)
        best = min(best, (ms, (rows, tiles, warps)))
        print(f"short_conv fused dx/dw rows={rows} tiles={tiles} warps={warps} fwd+bwd: {ms:.3f} ms")
    print(f"short_conv best dx/dw tiles: {best[1]}")
    tg.ShortConv.DX_ROWS, tg.ShortConv.DX_TILES, tg.ShortConv.DX_WARPS = best[1]
    with torch.no_grad():
        print(f"short_conv fused forward only: {time_ms(lambda: bench.ShortConvFunction.apply(x, w, None, (H, K, V))):.3f} ms")


if __name__ == "__main__":
    main()

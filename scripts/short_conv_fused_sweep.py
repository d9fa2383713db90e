"""Run JA-JC (docs/perf.md): the one-pass short-conv backward (du kept in registers, rows shifted by tl.gather or a
0/1 tl.dot) at several tiles and three formulations, against the two-pass backward of another train_gpt.py, with each
one's error against an fp32 torch reference. Measured out: this commit is reverted by the next.
    git show f7974e3:train_gpt.py > /tmp/old.py && python scripts/short_conv_fused_sweep.py /tmp/old.py"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: E402
import train_gpt as tg  # noqa: E402

other = bench.load_train_gpt_copy(sys.argv[1])
H, K, V, W = 8, 64, 64, 4
D = 2 * H * K + H * V
settings = [(32, 8, 2), (32, 8, 4), (16, 16, 2), (16, 16, 1), (32, 16, 2), (64, 4, 4), (32, 4, 1), (64, 8, 4), (64, 4, 2)]
variants = [(False, False, True), (True, False, True), (False, False, False), (True, False, False), (False, True, False), (True, True, False)]  # SHIFT_DOT, DW_TILE, FLAT
for B, T in ((48, 2048),):
    proj = torch.randn(B, T, D + 2 * H + 512, device="cuda", dtype=torch.bfloat16)
    x, w = proj[..., :D], torch.randn(D, W, device="cuda") * 0.5
    grads = [torch.randn(B, T, H, n, device="cuda", dtype=torch.bfloat16) for n in (K, K, V)]
    dk2, dx = torch.randn_like(grads[1]), torch.empty_like(proj)[..., :D]
    # fp32 reference for accuracy: the torch path
    xr, wr = x.float().detach().requires_grad_(), w.clone().requires_grad_()
    qkv = tg.short_conv_qkv(xr, wr, None, (H, K, V))[:3]
    sum((o * g.float()).sum() for o, g in zip(qkv, [grads[0], grads[1] + dk2, grads[2]])).backward()
    dw_old = other.ShortConv.backward(x, w, None, (H, K, V), grads, dx, False, dk2)[0]
    err_old = ((dx.float() - xr.grad).norm() / xr.grad.norm()).item(), ((dw_old.float() - wr.grad).norm() / wr.grad.norm()).item()
    print(f"old: dx err {err_old[0]:.2e} dw err {err_old[1]:.2e}", flush=True)
    calls = {"old": lambda: other.ShortConv.backward(x, w, None, (H, K, V), grads, dx, False, dk2)}
    def make(setting, variant):
        def f():
            tg.ShortConv.BWD_ROWS, tg.ShortConv.BWD_TILES, tg.ShortConv.BWD_WARPS = setting
            tg.ShortConv.SHIFT_DOT, tg.ShortConv.DW_TILE, tg.ShortConv.FLAT = variant
            return tg.ShortConv.backward(x, w, None, (H, K, V), grads, dx, False, dk2)
        return f
    for variant in variants:
        for setting in settings:
            try:
                dw = make(setting, variant)()[0]
                torch.cuda.synchronize()
            except Exception as e:
                print(f"{variant} {setting}: {type(e).__name__} {str(e)[:150]}", flush=True); continue
            e = ((dx.float() - xr.grad).norm() / xr.grad.norm()).item(), ((dw.float() - wr.grad).norm() / wr.grad.norm()).item()
            print(f"dot,dwtile,flat={variant} {setting}: dx err {e[0]:.2e} dw err {e[1]:.2e}", flush=True)
            calls[f"dot,dwtile,flat={variant} {setting}"] = make(setting, variant)
    # quick single pass to shortlist, then interleave the best 6 with old
    first = bench.interleaved_times_ms(calls, rounds=1)
    for n, ms in sorted(first.items(), key=lambda kv: kv[1][0]):
        print(f"pass1 {n}: {ms[0]*1e3:.1f} us", flush=True)
    best = sorted((n for n in first if n != "old"), key=lambda n: first[n][0])[:6]
    final = bench.interleaved_times_ms({n: calls[n] for n in ["old"] + best}, rounds=5)
    for n, ms in final.items():
        print(f"final B={B} T={T} {n}: {bench.spread_us(ms)}", flush=True)

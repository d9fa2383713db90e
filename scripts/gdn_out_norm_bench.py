"""The GDN output tail alone (per-head RMSNorm of the core's output, times the norm weight, then o_proj), forward +
backward at the trainer's shape, compiled as in the trainer, in several formulations: the trainer's (the norm weight
folded into o_proj's weight, docs/perf.md run ND: no reduction over tokens for its gradient), the trainer's before ND
(cast to bf16, then reshape to [tokens, H * V]), the order before run BD (reshape, then cast; in that run's whole model
inductor left the norm's reduction and its pointwise output in two kernels) and a hand-written rsqrt. The kernels
inductor makes of each (names and device time from torch.profiler, and the generated code under --code-dir) and
their median CUDA-event time. Inputs are random at a trained model's scale (never zeros).
    python scripts/gdn_out_norm_bench.py [--tokens 98304] [--heads 8] [--head-dim 64] [--code-dir DIR]"""
import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402
from bench import cuda_median_ms  # noqa: E402

UNFOLDED = {  # o: [N, H, V] bf16 from the core; w: [V] fp32 norm weight; returns the o_proj input [N, H * V], bf16
    "cast_then_reshape": lambda o, w: (tg.rms_norm(o.float(), eps=1e-5) * w).to(torch.bfloat16).reshape(o.shape[0], -1),
    "reshape_then_cast": lambda o, w: (tg.rms_norm(o.float(), eps=1e-5) * w).reshape(o.shape[0], -1).to(torch.bfloat16),
    "rsqrt": lambda o, w: (o.float() * torch.rsqrt(o.float().pow(2).mean(-1, keepdim=True) + 1e-5) * w).to(
        torch.bfloat16).reshape(o.shape[0], -1),
}
FORMS = {  # (o, w, proj [dim, H * V] fp32) -> the tail's output [N, dim]
    "folded": lambda o, w, proj: F.linear(tg.rms_norm(o.float(), eps=1e-5).to(torch.bfloat16).reshape(o.shape[0], -1),
                                          (proj * w.repeat(o.shape[1])).to(torch.bfloat16)),
    **{name: (lambda o, w, proj, form=form: F.linear(form(o, w), proj.to(torch.bfloat16))) for name, form in UNFOLDED.items()},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=98304)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--code-dir", default="")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU: it times inductor's Triton kernels")
    from torch._inductor.utils import run_and_get_code
    from torch.profiler import ProfilerActivity, profile
    N, H, V = args.tokens, args.heads, args.head_dim
    gen = torch.Generator(device="cuda").manual_seed(0)
    o = torch.randn(N, H, V, device="cuda", generator=gen).to(torch.bfloat16).requires_grad_()
    w = (1 + 0.1 * torch.randn(V, device="cuda", generator=gen)).requires_grad_()
    proj = (0.02 * torch.randn(args.dim, H * V, device="cuda", generator=gen)).requires_grad_()
    dy = torch.randn(N, args.dim, device="cuda", generator=gen).to(torch.bfloat16)
    results = {}
    for name, form in FORMS.items():
        fn = torch.compile(form)

        def step():
            for t in (o, w, proj):
                t.grad = None
            fn(o, w, proj).backward(dy)
        _, code = run_and_get_code(step)
        if args.code_dir:
            os.makedirs(args.code_dir, exist_ok=True)
            for i, src in enumerate(code):
                Path(args.code_dir, f"{name}_{i}.py").write_text(src)
        results[name] = [o.grad.float().clone(), w.grad.clone(), proj.grad.clone()]
        ms = cuda_median_ms(step, reps=30, warmup=5)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            torch.cuda.synchronize()
        kernels = [(e.key, e.self_device_time_total) for e in prof.key_averages() if e.self_device_time_total > 0]
        print(f"gdn_out_norm form:{name} fwd_bwd_ms:{ms:.3f} kernels:{len(kernels)}", flush=True)
        for key, us in sorted(kernels, key=lambda kv: -kv[1]):
            print(f"    {us:8.1f} us  {key[:100]}")
    ref = results["cast_then_reshape"]
    for name, grads in results.items():
        errs = [((g - r).norm() / r.norm()).item() for g, r in zip(grads, ref)]
        print(f"gdn_out_norm form:{name} rel_err_vs_cast_then_reshape do:{errs[0]:.2e} dw:{errs[1]:.2e} dproj:{errs[2]:.2e}")


if __name__ == "__main__":
    main()

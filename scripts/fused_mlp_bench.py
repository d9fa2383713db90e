"""The MLP alone, forward + backward at the trainer's shape (CUDA events, median of 30 after warm-up), compiled as
in the trainer: inductor's code for the plain-torch module against the Triton GEMMs (model.fused_mlp), and the
parity of both against fp32. Random inputs at a trained model's scale.
    python scripts/fused_mlp_bench.py [--tokens 98304] [--dim 512]"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402
from bench import cuda_median_ms  # noqa: E402


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def run(mlp: tg.MLP, x: torch.Tensor, dy: torch.Tensor, fused: bool, compiled: bool = True):
    """Forward + backward of the MLP; returns [output, d input, d weights...] and a closure for timing."""
    mlp.fused = fused
    fn = torch.compile(mlp) if compiled else mlp

    def step():
        for t in [x, *mlp.parameters()]:
            t.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=compiled):
            out = fn(x)
        out.backward(dy)
        return out
    out = step()
    return [out.detach(), x.grad.clone(), *[p.grad.clone() for p in mlp.parameters()]], step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=98304)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    torch.manual_seed(0)
    cfg = tg.ModelConfig(model_dim=args.dim)
    x = tg.rms_norm(torch.randn(args.tokens, args.dim, device="cuda")).bfloat16().requires_grad_()
    dy = torch.randn(args.tokens, args.dim, device="cuda", dtype=torch.bfloat16)
    mlp = tg.MLP(cfg).cuda()
    torch.nn.init.normal_(mlp.proj.weight, std=args.dim ** -0.5)  # trained, not the zero init
    ref = run(mlp, x.detach().float().requires_grad_(), dy.float(), False, compiled=False)[0]
    times = {}
    for fused in (False, True):
        result, step = run(mlp, x, dy, fused)
        errs = [rel_err(a, b) for a, b in zip(result, ref)]
        times[fused] = cuda_median_ms(step, reps=30, warmup=5)
        print(f"mlp fused:{fused} fwd+bwd_ms:{times[fused]:.3f} rel_err_vs_fp32 (out, d input, d weights):"
              f" {' '.join(f'{e:.2e}' for e in errs)}")
    print(f"mlp saved_ms:{times[False] - times[True]:.3f}")


if __name__ == "__main__":
    main()

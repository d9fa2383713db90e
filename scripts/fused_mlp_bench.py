"""The MLP alone, forward + backward at the trainer's shape (CUDA events, median of 30 after warm-up), compiled as
in the trainer: inductor's code for the plain-torch module against the Triton GEMMs (model.fused_mlp), and the
parity of both against fp32. Random inputs at a trained model's scale.
    python scripts/fused_mlp_bench.py [--tokens 98304] [--dim 512]"""
import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def time_ms(fn, reps: int = 30) -> float:
    for _ in range(5):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events)


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    return ((a.float() - ref.float()).norm() / ref.float().norm()).item()


def run(module: torch.nn.Module, args: tuple, out_grad: torch.Tensor | None, fused: bool, compiled: bool = True):
    """Forward + backward of the module; returns (output, input grads, parameter grads) and a closure for timing."""
    module.fused = fused
    fn = torch.compile(module) if compiled else module
    leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]

    def step():
        for t in leaves + list(module.parameters()):
            t.grad = None
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=compiled):
            out = fn(*args)
        out.backward(out_grad) if out_grad is not None else out.backward()
        return out
    out = step()
    return (out.detach(), [t.grad.clone() for t in leaves], [p.grad.clone() for p in module.parameters()]), step


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
    x32 = x.detach().float().requires_grad_()
    cases = {"mlp": (mlp, lambda inp: (inp,), dy.float())}
    for name, (module, make_args, grad) in cases.items():
        ref = run(module, make_args(x32), grad, False, compiled=False)[0]
        times = {}
        for fused in (False, True):
            result, step = run(module, make_args(x), None if grad is None else grad.bfloat16(), fused)
            errs = [rel_err(a, b) for a, b in zip([result[0], *result[1], *result[2]], [ref[0], *ref[1], *ref[2]])]
            times[fused] = time_ms(step)
            print(f"{name} fused:{fused} fwd+bwd_ms:{times[fused]:.3f} rel_err_vs_fp32 (out, d input, d weights):"
                  f" {' '.join(f'{e:.2e}' for e in errs)}")
        print(f"{name} saved_ms:{times[False] - times[True]:.3f}")


if __name__ == "__main__":
    main()

"""Muon's Newton-Schulz alone, on the stacks a preset's Muon step iterates (its matrices grouped by shape, one
process), in two forms: the trainer's (`train_gpt.newton_schulz`: both sums of an iteration inside the GEMMs, as
baddbmm's beta and alpha) and the form before it (separate scalings and additions, which inductor ran as pointwise
kernels between the GEMMs). On CUDA each form is compiled as the trainer compiles it (CUDA graphs) and timed with
CUDA events, the forms alternating round by round; on CPU both run eagerly (a smoke run of the script). It prints
how far the two forms' results are apart and each one's error against the iteration in fp32 (on the CPU), per stack,
then each form's time for the whole set of stacks.
    python scripts/newton_schulz_bench.py [--presets gdn_hybrid_lean attention] [--reps 50] [--rounds 3]"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402
from bench import cuda_times_ms, newton_schulz_separate_sums  # noqa: E402


FORMS = {"baddbmm": tg.newton_schulz, "separate_sums": newton_schulz_separate_sums}


def muon_stacks(preset: str, device: torch.device, seed: int = 0) -> list[torch.Tensor]:
    """Random fp32 stacks shaped like the preset's Muon groups (the matrices of one shape, stacked), at world size 1."""
    cfg = tg.load_config([f"model={preset}", "export=none"])  # export=none: no compressor check
    with torch.device("meta"):
        model = tg.GPT(cfg.model)
    by_shape: dict[tuple, int] = {}
    for name, p in model.named_parameters():
        if tg.param_role(name) == "matrix":
            by_shape[tuple(p.shape)] = by_shape.get(tuple(p.shape), 0) + 1
    gen = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(n, *shape, device=device, generator=gen) for shape, n in by_shape.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["gdn_hybrid_lean", "gdn_hybrid", "attention"])
    parser.add_argument("--ns-steps", type=int, default=tg.TrainConfig().muon_ns_steps)
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for preset in args.presets:
        stacks = muon_stacks(preset, device)
        shapes = " ".join(f"{s.shape[0]}x{s.shape[1]}x{s.shape[2]}" for s in stacks)
        fns = {name: torch.compile(f, mode="reduce-overhead") if device.type == "cuda" else f for name, f in FORMS.items()}
        outs = {name: [fn(s, args.ns_steps).clone() for s in stacks] for name, fn in fns.items()}  # clone: graph outputs
        diff = max(((x.float() - y.float()).norm() / y.float().norm()).item() for x, y in zip(*outs.values()))
        print(f"ns_bench preset:{preset} device:{device.type} stacks:{shapes} rel_diff_between_forms:{diff:.2e}", flush=True)
        fp32 = [tg.newton_schulz(s.cpu(), args.ns_steps) for s in stacks]  # the iteration in fp32, on the CPU
        for name, out in outs.items():  # on CUDA the forms run in bf16: which one rounds less
            errs = [((o.float().cpu() - r).norm() / r.norm()).item() for o, r in zip(out, fp32)]
            print(f"ns_bench preset:{preset} form:{name} rel_err_vs_fp32:" + ",".join(f"{e:.2e}" for e in errs), flush=True)
        rounds: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(args.rounds):
            for name, fn in fns.items():
                def all_stacks(fn=fn):
                    for s in stacks:
                        fn(s, args.ns_steps)
                if device.type == "cuda":
                    for _ in range(3):
                        all_stacks()
                    rounds[name].append(statistics.median(cuda_times_ms(all_stacks, args.reps)))
                else:
                    t0 = time.perf_counter()
                    all_stacks()
                    rounds[name].append(1000 * (time.perf_counter() - t0))
        for name, times in rounds.items():
            print(f"ns_bench preset:{preset} form:{name} ms:{statistics.median(times):.3f} rounds_ms:"
                  + ",".join(f"{t:.3f}" for t in times), flush=True)
        saved = statistics.median(rounds["separate_sums"]) - statistics.median(rounds["baddbmm"])
        print(f"ns_bench preset:{preset} saved_ms:{saved:.3f}", flush=True)


if __name__ == "__main__":
    main()

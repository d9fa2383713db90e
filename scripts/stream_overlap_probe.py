"""How much of a GDN layer's backward could hide the weight-gradient GEMMs around it, if they ran on a second stream.

FLA's chunk backward is bound by dependency chains (docs/perf.md: ~8% of peak), so the SMs it leaves idle could run the
GEMMs that nothing in the layer's backward waits for: the MLP's two weight gradients, the output projection's and the
gate projection's, and the next layer's input projection's. This times, per layer call at the bench's 98,304 tokens:
the trainer's GDN backward op alone, those GEMMs alone, both one after the other on one stream, and both at once on
two streams (the GEMMs on the second). A gain here bounds what a two-stream backward could buy in the full step.

    python scripts/stream_overlap_probe.py --rounds 5      # GPU only
"""
import argparse
import statistics

import torch

from fla_config_sweep import C, H, K, SHAPES, V, core_inputs  # a sibling script; it puts the repo root on sys.path
from bench import interleaved_times_ms, spread_us  # noqa: E402 (needs the root that fla_config_sweep added)
import train_gpt as tg  # noqa: E402


def gemm_set(M: int, D: int, hidden: int, proj_out: int, dtype=torch.bfloat16) -> list:
    """The off-critical-path weight-gradient GEMMs of one hybrid layer's backward, as (a, b) pairs for a.t() @ b."""
    g = torch.Generator(device="cuda").manual_seed(1)
    r = lambda *s: torch.randn(*s, device="cuda", dtype=dtype, generator=g)  # noqa: E731
    dy, x, dh, c, o, dgate, dP = r(M, D), r(M, D), r(M, hidden), r(M, hidden), r(M, D), r(M, D), r(M, proj_out)
    return [(dh, x), (dy, c), (dy, o), (dgate, x), (dP, x)]  # MLP fc, MLP proj, o_proj, g_proj, next layer's input proj


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    side = torch.cuda.Stream()
    for B, T in SHAPES:
        inputs = core_inputs(B, T)
        out = tg.gdn_core_fwd(*inputs, None, None, H, K, V, H, C, False)
        saved, do = [*inputs, *out[2:]], torch.randn_like(out[0]) * 0.1
        pairs = gemm_set(B * T, 512, 2048, inputs[0].shape[-1])
        gdn = lambda: tg.gdn_core_bwd(do, None, saved, None, None, H, K, V, H, C, False)  # noqa: E731
        gemms = lambda: [a.t() @ b for a, b in pairs]  # noqa: E731

        def serial():
            gdn(), gemms()

        def overlapped():
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                grads = gemms()
            gdn()
            torch.cuda.current_stream().wait_stream(side)
            for t in grads:  # freed on the main stream after the join: the allocator must not hand them out earlier
                t.record_stream(torch.cuda.current_stream())

        def overlapped_gdn_side():  # the other way round: the GEMMs on the main stream, the GDN backward beside them
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                res = gdn()
            grads = gemms()
            torch.cuda.current_stream().wait_stream(side)
            for t in res + grads:
                t.record_stream(torch.cuda.current_stream())

        times = interleaved_times_ms({"gdn_bwd": gdn, "gemms": gemms, "serial": serial, "two_streams": overlapped,
                                      "two_streams_gdn_side": overlapped_gdn_side}, args.rounds)
        for name, ms in times.items():
            print(f"{B}x{T} {name}: {spread_us(ms)}", flush=True)
        med = {name: statistics.median(ms) for name, ms in times.items()}
        print(f"{B}x{T} hidden_by_two_streams_us:{(med['serial'] - med['two_streams']) * 1e3:.1f} "
              f"per_step_8_layers_ms:{(med['serial'] - med['two_streams']) * 8:.2f}", flush=True)


if __name__ == "__main__":
    main()

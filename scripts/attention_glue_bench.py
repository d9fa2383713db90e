"""The attention block's glue (q/k RMSNorm + RoPE), by where RoPE's cos and sin come from (docs/perf.md runs OD, OE).

Before run OD the trainer computed the tables inside the compiled graph, and inductor fused cos and sin into q's and
k's norm + RoPE kernels: every element of q and k evaluated both functions, in the forward and again in the backward,
and those kernels ran at ~0.7 TB/s on an H100. Now the tables come from train_gpt's `rope_table` op, which inductor
cannot look into, so it reads them. Sources compared:
  graph   the formula traced into the graph (the trainer before OD)
  op      train_gpt.rope_table (the trainer now)
  table   computed eagerly once and cached before compiling (the graph reads a constant): the floor for the op

Since run PA the trainer splits q|k|v by heads (a view as [B, T, heads, head_dim], then a split along heads) instead of
by columns. Split by columns, inductor's backward stored RoPE's gradient and re-read it to finish the norm's backward
into d(qkv): two passes over q's and k's gradients. Split by heads, it is one. Since run PD, RoPE runs token-major, and
SDPA gets transposed views. The glue as it was before PA (split by columns, rotated heads-first, op source) is timed
beside the three sources, each form given its gradients in the layout cuDNN would hand back.

For each shape it checks that all of them give the same outputs and gradients (the glue alone and a whole Attention
module, compiled), then on CUDA times forward + backward of each, interleaved in rounds. OE ran an earlier version
of this script (it patched the module's RoPE method and drew new inputs per source).

    python scripts/attention_glue_bench.py [--shapes 48x2048 12x8192] [--rounds 3] [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bench  # noqa: E402
import train_gpt as tg  # noqa: E402

TABLES: dict = {}


rope_in_graph = tg.rope_table._init_fn  # the op's own body as a plain function: dynamo traces it into the graph


def rope_eager_table(inv_freq: torch.Tensor, n: int) -> list[torch.Tensor]:
    return TABLES[n]


SOURCES = {"graph": rope_in_graph, "op": tg.rope_table, "table": rope_eager_table}


def attention_glue(qkv: torch.Tensor, attn: tg.Attention, B: int, T: int, split: str = "heads"):
    """Attention.forward's glue between the qkv projection and SDPA without a carried state: q and k split by heads,
    RMSNorm'd and rotated token-major, then transposed to heads-first views. split="columns": the trainer before run
    PA, q|k|v split by columns, viewed as heads, transposed, then rotated into heads-first tensors (its backward took
    two passes over q's and k's gradients)."""
    if split == "columns":
        D, Dkv = attn.H * attn.hd, attn.Hkv * attn.hd
        q, k, _ = (t.view(B, T, -1, attn.hd) for t in qkv.split([D, Dkv, Dkv], dim=-1))
        q, k = tg.rms_norm(q).transpose(1, 2), tg.rms_norm(k).transpose(1, 2)
        cos, sin = (t.transpose(0, 1)[None] for t in tg.rope_table(attn.inv_freq, T))  # [1, 1, T, hd / 2]
        return tg.rotate(q, cos, sin), tg.rotate(k, cos, sin)
    q, k, _ = qkv.view(B, T, -1, attn.hd).split([attn.H, attn.Hkv, attn.Hkv], dim=2)
    cos, sin = tg.rope_table(attn.inv_freq, T)
    return tuple(tg.rotate(tg.rms_norm(t), cos, sin).transpose(1, 2) for t in (q, k))


def glue_and_module_steps(B: int, T: int, device: torch.device) -> tuple[dict, dict]:
    """Per source, a glue step and a module step (forward + backward, compiled) and their outputs and gradients; and
    "glue_columns": the op's glue split by columns, with its outputs and qkv's gradient under results["columns"]."""
    cfg = tg.load_config(["model=attention", "export=none"]).model
    torch.manual_seed(0)
    attn = tg.Attention(cfg).to(device)
    torch.nn.init.normal_(attn.o_proj.weight, std=0.02)
    TABLES[T] = rope_in_graph(attn.inv_freq, T)
    Dkv, bf16 = attn.Hkv * attn.hd, dict(device=device, dtype=torch.bfloat16)
    x = torch.randn(B, T, cfg.model_dim, **bf16, requires_grad=True)
    qkv = torch.randn(B, T, cfg.model_dim + 2 * Dkv, **bf16, requires_grad=True)
    dy, gq, gk = (torch.randn(*shape, **bf16) for shape in ((B, T, cfg.model_dim), (B, T, attn.H, attn.hd),
                                                            (B, T, attn.Hkv, attn.hd)))
    # q's and k's gradients laid out as cuDNN's SDPA hands them back, like its inputs: token-major now, heads-first
    # before run PA
    gq_columns, gk_columns = (g.transpose(1, 2).contiguous() for g in (gq, gk))
    gq, gk = gq.transpose(1, 2), gk.transpose(1, 2)
    torch._dynamo.reset()  # static kernels for each shape, as the trainer's (a second shape would compile dynamic ones)
    glue_c = torch.compile(lambda qkv: attention_glue(qkv, attn, B, T), dynamic=False)
    module_c = torch.compile(attn, dynamic=False)

    def with_source(rope, step):  # the glue and Attention.forward look rope_table up in train_gpt (dynamo guards on
        def run():  # it), so every step sets its source: interleaved timing runs the steps of all sources in turn
            tg.rope_table = rope
            step()
        return run

    def module_backward():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            module_c(x)[0].backward(dy)
    steps, results = {}, {}
    for source, rope in SOURCES.items():
        glue_step = with_source(rope, lambda: torch.autograd.backward(list(glue_c(qkv)), [gq, gk]))
        module_step = with_source(rope, module_backward)
        qkv.grad = x.grad = None
        attn.zero_grad()
        glue_step(), module_step()
        results[source] = ([t.detach().float() for t in glue_c(qkv)] + [qkv.grad.float(), x.grad.float()]
                           + [p.grad.float() for p in attn.parameters()])
        steps[f"glue_{source}"], steps[f"module_{source}"] = glue_step, module_step
    columns_c = torch.compile(lambda qkv: attention_glue(qkv, attn, B, T, split="columns"), dynamic=False)
    steps["glue_columns"] = with_source(SOURCES["op"], lambda: torch.autograd.backward(list(columns_c(qkv)),
                                                                                       [gq_columns, gk_columns]))
    qkv.grad = None
    steps["glue_columns"]()
    results["columns"] = [t.detach().float() for t in columns_c(qkv)] + [qkv.grad.float()]
    return steps, results  # the trainer's op is in place: glue_columns ran last


def max_rel_diff(results: dict, source: str) -> float:
    """Largest difference of any output or gradient from the graph source's, relative to that tensor's largest value."""
    return max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
               for a, b in zip(results[source], results["graph"][:len(results[source])], strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["48x2048", "12x8192"], help="sequences x length")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cpu: the agreement check alone, no timing")
    args = parser.parse_args()
    device = torch.device(args.device)
    for shape in args.shapes:
        B, T = (int(n) for n in shape.split("x"))
        steps, results = glue_and_module_steps(B, T, device)
        for source in ("op", "table", "columns"):
            print(f"attention_glue shape:{shape} {source} vs graph max_rel_diff:{max_rel_diff(results, source):.2e}",
                  flush=True)
        if device.type != "cuda":
            continue
        times = bench.interleaved_times_ms(steps, args.rounds)
        for name, ms in times.items():
            print(f"attention_glue shape:{shape} case:{name} ms:{statistics.median(ms):.4f} rounds:"
                  + ",".join(f"{t:.4f}" for t in ms), flush=True)
        for part in ("glue", "module"):
            graph, op, table = (statistics.median(times[f"{part}_{source}"]) * 1e3 for source in SOURCES)
            print(f"attention_glue shape:{shape} {part} (forward + backward, us a layer call): graph {graph:.1f}, "
                  f"op {op:.1f} (saves {graph - op:.1f}), table {table:.1f} (saves {graph - table:.1f})", flush=True)
        columns, heads = (statistics.median(times[f"glue_{split}"]) * 1e3 for split in ("columns", "op"))
        print(f"attention_glue shape:{shape} glue split by columns {columns:.1f} us, by heads {heads:.1f} "
              f"(saves {columns - heads:.1f})", flush=True)


if __name__ == "__main__":
    main()

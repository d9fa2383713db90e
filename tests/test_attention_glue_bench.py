"""scripts/attention_glue_bench.py's agreement check on CPU: RoPE tables from the trainer's op, from an eager cache and
traced into the graph, and q|k|v split by heads or by columns, give the same attention outputs and gradients (the GPU
timings are docs/perf.md runs OE and PA)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import attention_glue_bench as agb  # noqa: E402


def test_the_three_rope_sources_and_both_qkv_splits_agree_on_outputs_and_gradients():
    steps, results = agb.glue_and_module_steps(2, 32, torch.device("cpu"))
    cases = {f"{part}_{source}" for part in ("glue", "module") for source in agb.SOURCES}
    assert set(steps) == cases | {"glue_columns"}
    assert len(results["op"]) == 2 + 2 + 4  # q and k after RoPE, the input gradients, the four projections' gradients
    assert len(results["columns"]) == 2 + 1  # q|k|v split by columns: q and k after RoPE, qkv's gradient
    for source in ("op", "table", "columns"):
        assert agb.max_rel_diff(results, source) < 1e-2  # bf16: a rounding flip is 2^-8 of an element at most
    assert agb.SOURCES["op"] is agb.tg.rope_table  # the script leaves the trainer's op in place
    for name, step in steps.items():  # interleaved timing runs them in turn: each step sets its own source
        agb.tg.rope_table = agb.SOURCES["table"] if name.endswith("op") or name == "glue_columns" else agb.SOURCES["op"]
        step()
        assert agb.tg.rope_table is agb.SOURCES["op" if name == "glue_columns" else name.split("_")[1]], name
    agb.tg.rope_table = agb.SOURCES["op"]

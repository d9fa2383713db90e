"""scripts/quant_gap.py on a real (tiny, CPU) run with an int6 export: its `float` and `all` rows reproduce the run's
two scores exactly, its types and leaves each partition the tensors the export changed, and each row is the eval of
exactly that mix of weights."""
import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_gpt as tg
from conftest import ROOT, TINY, run_trainer

SCRIPT = ROOT / "scripts" / "quant_gap.py"


def int6_run(synthetic_data, log_dir: Path, keep_float_max_numel: int, steps: int) -> tuple[dict, Path]:
    """A short training run with the int6 export: its results and its log prefix (logs/<run_id>)."""
    args = TINY[:-1] + synthetic_data["overrides"] + [
        "export=int6", "export.compressors=[lzma]", "export.calib_seqs=8", f"export.keep_float_max_numel={keep_float_max_numel}",
        f"train.max_steps={steps}", "train.schedule=steps", "train.max_wallclock_seconds=600"]
    _, res = run_trainer(args, log_dir=log_dir)
    return res, Path(res["log_path"]).with_suffix("")


@pytest.fixture(scope="module")
def exported_run(synthetic_data, tmp_path_factory):
    """A short training run whose export quantizes every block matrix (keep_float_max_numel below their size)."""
    return int6_run(synthetic_data, tmp_path_factory.mktemp("quant_gap_run"), 1000, 30)


def run_script(*args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_rows_reproduce_the_run_and_partition_its_tensors(exported_run, tmp_path):
    res, prefix = exported_run
    proc = run_script(prefix, "--device", "cpu", "--out", tmp_path / "gap.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["group"]: r for r in json.loads((tmp_path / "gap.json").read_text())["rows"]}
    # The whole set of tokens: the run's own scores, bf16 (trained weights) and int6 round trip, to the last digit.
    assert math.isclose(rows["float"]["val_bpb"], res["val_bpb"], rel_tol=1e-9), (rows["float"], res["val_bpb"])
    assert math.isclose(rows["all"]["val_bpb"], res["q_val_bpb"], rel_tol=1e-9), (rows["all"], res["q_val_bpb"])
    assert rows["all"]["share"] == 1 and rows["float"]["share"] is None and rows["float"]["gap_bpb"] == 0

    cfg = tg.config_from_dict(tg.Config, res["config"])
    trained = torch.load(f"{prefix}.model.pt")
    decoded = tg.load_artifact(Path(res["artifact_path"]).read_bytes())
    changed = [k for k in trained if not torch.equal(decoded[k], trained[k].float())]
    plan = tg.quant_plan(tg.GPT(cfg.model), cfg.export)
    assert sum(spec is not None for spec in plan.values()) > 10  # the block matrices went through GPTQ
    assert rows["all"]["tensors"] == len(changed) and rows["all"]["params"] == sum(trained[k].numel() for k in changed)
    types = [g for g in rows if g in ("gdn", "attn", "mlp", "embed", "skip")]
    leaves = [g for g in rows if "." in g] + [g for g in types if not any(k.startswith(g + ".") for k in rows)]
    assert {"gdn", "attn", "mlp", "embed", "gdn.q", "gdn.out", "gdn.A_log", "gdn.conv", "attn.q", "attn.o"} <= set(rows)
    for family in (types, leaves):
        assert sum(rows[g]["tensors"] for g in family) == len(changed), family
        assert sum(rows[g]["params"] for g in family) == rows["all"]["params"], family
    # One leaf recomputed by hand: GDN's out projections from the artifact, everything else as trained.
    names = [k for k in changed if tg.grad_category(k, cfg.model.layout) == ("gdn", "out")]
    model = tg.GPT(cfg.model)
    model.load_state_dict({k: decoded[k] if k in names else v for k, v in trained.items()})
    d = tg.Dist(0, 1, 0, torch.device("cpu"))
    tables = tg.build_byte_tables(cfg.data.tokenizer_path, cfg.model.vocab_size, "cpu")
    again = tg.evaluate(model, tg.load_val_tokens(cfg.data.val_files, d.device), tables, cfg, d, ["plain"])["plain"]
    assert math.isclose(again["val_bpb"], rows["gdn.out"]["val_bpb"], rel_tol=1e-9)
    assert rows["gdn.out"]["tensors"] == cfg.model.layout.count("G")
    # The console carries the same rows, and a summary with the sums.
    printed = dict(re.findall(r"^quant_gap group:(\S+) .* val_bpb:(\S+) gap_bpb", proc.stdout, re.M))
    assert printed.keys() == rows.keys()
    assert all(math.isclose(float(printed[g]), rows[g]["val_bpb"], rel_tol=1e-7) for g in rows)
    summary = re.search(r"^quant_gap_summary .* tensors_changed:(\d+) .* sum_of_types:(\S+) sum_of_leaves:(\S+)",
                        proc.stdout, re.M)
    assert int(summary[1]) == len(changed)
    assert math.isclose(float(summary[2]), sum(rows[g]["gap_bpb"] for g in types), abs_tol=2e-6)
    assert math.isclose(float(summary[3]), sum(rows[g]["gap_bpb"] for g in leaves), abs_tol=2e-6)


def test_val_tokens_limits_the_eval(exported_run):
    _, prefix = exported_run
    proc = run_script(prefix, "--device", "cpu", "--val-tokens", 640)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"^quant_gap_summary .* tokens:640 ", proc.stdout, re.M), proc.stdout


def test_bad_input_names_the_file_or_value(exported_run, tmp_path):
    _, prefix = exported_run
    proc = run_script(tmp_path / "no_such_run", "--device", "cpu")
    assert proc.returncode != 0 and f"{tmp_path / 'no_such_run'}.config.yaml: not found" in proc.stderr
    proc = run_script(prefix, "--device", "cpu", "--val-tokens", 10 ** 9)
    assert proc.returncode != 0 and "--val-tokens 1000000000: the validation set has" in proc.stderr
    other = tmp_path / "other"  # another run's artifact beside these weights: refused, not evaluated
    for suffix in (".config.yaml", ".model.pt"):
        (tmp_path / ("other" + suffix)).write_bytes(Path(f"{prefix}{suffix}").read_bytes())
    state = torch.load(f"{prefix}.model.pt")
    del state[next(iter(state))]
    torch.save(state, f"{other}.model.pt")
    (tmp_path / "other.int6.ptz").write_bytes(Path(f"{prefix}.int6.ptz").read_bytes())
    proc = run_script(other, "--device", "cpu")
    assert proc.returncode != 0 and "do not match" in proc.stderr and "other.model.pt" in proc.stderr


def test_try_rebuilds_the_run_and_prices_other_group_bits(exported_run, tmp_path):
    """--try re-exports with the run's own Hessians, recomputed from its calibration sequences: a variant that changes
    nothing rebuilds the run's artifact byte for byte and its score; gdn.k:8 retunes exactly the GDN k projections,
    leaves every other tensor as in the artifact, costs bytes and lowers k's error."""
    res, prefix = exported_run
    proc = run_script(prefix, "--device", "cpu", "--no-groups", "--try", "gdn:6", "gdn.k:8", "matrix_clip_k=8",
                      "--out", tmp_path / "t.json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "t.json").read_text())
    assert [r["group"] for r in out["rows"]] == ["float", "all"]
    same, k8, clip8 = out["tries"]
    run_bytes = Path(res["artifact_path"]).stat().st_size
    assert same["retuned"] == 0 and same["as_artifact"] == same["tensors"] and same["bytes_model"] == run_bytes
    assert math.isclose(same["val_bpb"], res["q_val_bpb"], rel_tol=1e-9) and abs(same["gap_change_bpb"]) < 1e-9
    assert same["bytes_total"] == res["bytes_total"]
    cfg = tg.config_from_dict(tg.Config, res["config"])
    gdn_blocks = cfg.model.layout.count("G")
    assert k8["group_bits"] == ["gdn.k:8"] and k8["retuned"] == gdn_blocks
    assert k8["as_artifact"] == k8["tensors"] - gdn_blocks and k8["bytes_model"] > run_bytes
    assert k8["bytes_change"] == k8["bytes_model"] - run_bytes
    # A tighter clip (8 std instead of 15) retunes every int6 matrix, and only those: finer steps, more bytes.
    int6 = [n for n, spec in tg.quant_plan(tg.GPT(cfg.model), cfg.export).items() if spec and spec[0] == 6]
    assert clip8["retuned"] == len(int6) and clip8["as_artifact"] == clip8["tensors"] - len(int6)
    assert clip8["bytes_model"] > run_bytes
    printed = re.findall(r"^quant_gap_try_bytes try:(\S+) bytes_model:(\d+) .* fits:True", proc.stdout, re.M)
    assert printed == [("gdn:6", str(run_bytes)), ("gdn.k:8", str(k8["bytes_model"])),
                       ("matrix_clip_k=8", str(clip8["bytes_model"]))]


@pytest.fixture(scope="module")
def partly_float_run(synthetic_data, tmp_path_factory):
    """A run whose export keeps the 64 x 64 mixer matrices in fp16 (keep_float_max_numel above their size), as a real
    run keeps a_proj and b_proj; the MLP and the embedding are quantized."""
    return int6_run(synthetic_data, tmp_path_factory.mktemp("quant_gap_partly_float"), 5000, 20)


def test_try_variants_stay_exact_and_independent_when_one_quantizes_more(partly_float_run, tmp_path):
    """A variant that quantizes matrices the run kept in fp16 (o_proj among them) needs Hessians the run never
    collected, and a hooked o_proj runs its norm unfolded (other rounding in the forward): those Hessians get a pass of
    their own, so the no-change variant beside it still rebuilds the run byte for byte. Each variant's artifact is its
    own (an fp16 tensor is a copy, not the live weight that scoring the next variant overwrites): its bytes and score
    equal the same variant's tried alone."""
    res, prefix = partly_float_run
    both = run_script(prefix, "--device", "cpu", "--no-groups", "--try", "gdn:6", "keep_float_max_numel=1000",
                      "--out", tmp_path / "both.json")
    alone = run_script(prefix, "--device", "cpu", "--no-groups", "--try", "keep_float_max_numel=1000",
                       "--out", tmp_path / "alone.json")
    assert both.returncode == 0 and alone.returncode == 0, both.stderr[-3000:] + alone.stderr[-3000:]
    same, finer = json.loads((tmp_path / "both.json").read_text())["tries"]
    (finer_alone,) = json.loads((tmp_path / "alone.json").read_text())["tries"]
    run_bytes = Path(res["artifact_path"]).stat().st_size
    assert same["as_artifact"] == same["tensors"] and same["bytes_model"] == run_bytes
    assert math.isclose(same["val_bpb"], res["q_val_bpb"], rel_tol=1e-9)
    cfg = tg.config_from_dict(tg.Config, res["config"])
    model = tg.GPT(cfg.model)
    kept, finer_plan = tg.quant_plan(model, cfg.export), tg.quant_plan(model, dataclasses.replace(
        cfg.export, keep_float_max_numel=1000))
    newly = [n for n in kept if kept[n] is None and finer_plan[n] is not None]
    assert any(n.endswith("mixer.o_proj.weight") for n in newly)
    assert finer["retuned"] == len(newly) and finer["as_artifact"] == finer["tensors"] - len(newly)
    assert (finer["bytes_model"], finer["val_bpb"]) == (finer_alone["bytes_model"], finer_alone["val_bpb"])


@pytest.mark.parametrize("variant,message", [
    ("gdn.k:8,gdn.x:4", "config export.group_bits: 'gdn.x:4' must be 'group:bits'"),
    ("calib_seqs=4", "'calib_seqs' is not an export key a re-export can change (matrix_bits, embed_bits"),
    ("matrix_clip_k=0", "config export.matrix_clip_k: 0.0 must be > 0"),
    ("export.matrix_bits=9", "config export.matrix_bits: 9 must be in 2..8")])
def test_a_bad_try_fails_before_any_eval(exported_run, variant, message):
    _, prefix = exported_run
    proc = run_script(prefix, "--device", "cpu", "--try", "gdn:6", variant)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "quant_gap group:" not in proc.stdout

"""Tests of records.py: writing, validating, ranking and comparing record folders.

Fake but realistic run outputs (logs/<run_id>.txt, logs/<run_id>.results.json, a tiny
train_gpt.py) are built in tmp dirs; scipy checks the hand-written statistics.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # records.py lives at the repo top level, not in a package

import records  # noqa: E402

BPB_PER_NAT = 0.387130  # SP8192 FineWeb val: val_bpb / val_loss is a tokenizer constant
SCRIPT_TEXT = "# train_gpt.py (test stand-in)\nimport os\nprint('training', os.getpid())\n"
CONFIG = {"model": {"preset": "gdn_hybrid", "layout": "GGGGAGGGAG", "dim": 512},
          "optim": {"matrix_lr": 0.02, "embed_lr": 0.03}, "train": {"seed": 0, "iterations": 3600}}


# ---------------------------------------------------------------------------------------------
# fake run outputs


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "train_gpt.py"
    path.write_text(SCRIPT_TEXT)
    return path


def make_run(workdir: Path, script: Path, seed: int, pre_bpb: float, *,
             quant_gap: float | None = 0.011,
             bytes_model: int = 13_812_345, config: dict | None = None,
             date: str = "2026-11-22", **fields) -> Path:
    """Write logs/<run_id>.txt and logs/<run_id>.results.json as train_gpt.py would; return the
    results path. quant_gap=None makes a run without export (score = pre-quant bf16); its config
    says export.enabled false unless config says otherwise. fields override results.json fields."""
    logs = workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    run_id = f"gdn_s{seed}"
    pre_loss = pre_bpb / BPB_PER_NAT
    quantized = quant_gap is not None
    q_bpb = pre_bpb + quant_gap if quantized else None
    q_loss = q_bpb / BPB_PER_NAT if quantized else None
    bytes_code = script.stat().st_size
    bytes_total = bytes_code + (bytes_model if quantized else 0)
    bf16_line = f"final_bf16_exact val_loss:{pre_loss:.8f} val_bpb:{pre_bpb:.8f}"
    final_line = (f"final_int6_roundtrip_exact val_loss:{q_loss:.8f} val_bpb:{q_bpb:.8f}"
                  if quantized else bf16_line)
    log_lines = [
        script.read_text(),
        "=" * 40, "python 3.11.9 torch 2.12.0 fla 0.6.0 triton 3.7.1", "=" * 40,
        "step:100/3600 train_loss:3.2100 lr_scale:1.0000 tok/s:612345 step_avg:160.12ms "
        "elapsed:16.0s eta:560.0s",
        f"step:3600 val_loss:{pre_loss:.8f} val_bpb:{pre_bpb:.8f}",
        bf16_line,
    ]
    if quantized:
        log_lines.append(f"bytes_code:{bytes_code} bytes_model:{bytes_model} "
                         f"bytes_total:{bytes_total}")
        log_lines.append(final_line)
    (logs / f"{run_id}.txt").write_text("\n".join(log_lines) + "\n")

    resolved = json.loads(json.dumps(config or CONFIG))
    resolved["train"]["seed"] = seed
    resolved.setdefault("export", {}).setdefault("enabled", quantized)
    results = {
        "run_id": run_id, "date": date, "model_preset": "gdn_hybrid", "layout": "GGGGAGGGAG",
        "seed": seed, "world_size": 1, "hardware": "1xNVIDIA H100 80GB HBM3",
        "versions": {"python": "3.11.9", "torch": "2.12.0", "fla": "0.6.0", "triton": "3.7.1"},
        "params": 32_100_000, "steps": 3600 + seed % 7, "tokens_seen": 3600 * 65536,
        "train_time_s": 588.1, "training_clock_s": 588.4, "step_avg_ms": 160.12 + seed % 3, "tok_per_s": 612345.0,
        "peak_mem_mib": 40123, "val_loss": pre_loss, "val_bpb": pre_bpb,
        "q_val_loss": q_loss, "q_val_bpb": q_bpb, "quant_name": "int6" if quantized else None,
        "final_line": final_line, "bytes_code": bytes_code,
        "bytes_model": bytes_model if quantized else 0, "bytes_total": bytes_total,
        "eval_time_s": 41.5,
        "evals": {"plain": {"val_loss": pre_loss, "val_bpb": pre_bpb, "eval_time": 3.5},
                  "sliding": {"val_loss": pre_loss - 0.01, "val_bpb": pre_bpb - 0.01 * BPB_PER_NAT,
                              "eval_time": 38.0}},
        "export_times": {"gptq": 7.25, "compress": 50.5, "roundtrip_eval": 3.0} if quantized else {},
        "log_path": f"logs/{run_id}.txt",
        "artifact_path": f"logs/{run_id}.int6.ptz" if quantized else None,
        "artifact_sha256": "ab" * 32 if quantized else None,
        "code_sha256": records.sha256_of(script), "config": resolved,
        "data_name": "fineweb10B_sp8192",
    }
    results.update(fields)
    path = logs / f"{run_id}.results.json"
    path.write_text(json.dumps(results, indent=2))
    return path


# results.json fields of a run on the challenge's hardware (as train_gpt.py writes them).
ON_8XH100 = dict(world_size=8, hardware="8xNVIDIA H100 80GB HBM3")


def make_runs(workdir: Path, script: Path, pre_bpbs: list[float], **kwargs) -> list[Path]:
    return [make_run(workdir, script, seed, bpb, **kwargs)
            for seed, bpb in zip((1337, 42, 2025), pre_bpbs)]


@pytest.fixture
def record(tmp_path: Path, script: Path) -> Path:
    """A valid three-seed record."""
    runs = make_runs(tmp_path / "run", script, [1.1234, 1.1241, 1.1229])
    return records.write_record("track_local", "gdn_hybrid_3seed", runs, author="A. Tester",
                                github_id="atester", blurb="GDN hybrid, int6 GPTQ",
                                records_dir=tmp_path / "records", script=script,
                                commands=["torchrun --nproc_per_node=1 train_gpt.py"])


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = records.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# write + validate


def test_write_creates_a_valid_record(record: Path, script: Path, capsys):
    assert record.name == "2026-11-22_gdn_hybrid_3seed"
    assert record.parent.name == "track_local"
    expected = {"README.md", "submission.json", "train_gpt.py", "config.yaml",
                "train_seed1337.log", "train_seed42.log", "train_seed2025.log", "results"}
    assert {p.name for p in record.iterdir()} == expected
    assert {p.name for p in (record / "results").iterdir()} == {
        "seed1337.json", "seed42.json", "seed2025.json"}
    assert (record / "train_gpt.py").read_bytes() == script.read_bytes()

    sub = json.loads((record / "submission.json").read_text())
    q_bpbs = [round(b + 0.011, 8) for b in (1.1234, 1.1241, 1.1229)]
    assert sub["seeds"] == [1337, 42, 2025]
    assert sub["val_bpb"] == pytest.approx(np.mean(q_bpbs), abs=1e-8)
    assert sub["val_bpb_std"] == pytest.approx(np.std(q_bpbs, ddof=1), abs=1e-8)
    assert sub["bytes_total"] == script.stat().st_size + 13_812_345
    assert sub["bytes_code"] == script.stat().st_size
    assert sub["pytorch_version"] == "2.12.0"
    assert sub["seed_results"]["42"]["pre_quant_val_bpb"] == pytest.approx(1.1241)
    assert sub["seed_results"]["42"]["val_bpb"] == pytest.approx(1.1351, abs=1e-8)
    assert records.validate_record(record) == []

    readme = (record / "README.md").read_text()
    assert "torchrun --nproc_per_node=1 train_gpt.py" in readme
    assert "| 42 | 3,600 |" in readme and "**mean**" in readme and "**std**" in readme
    assert "| 1.12340000 | 1.13440000 | 0.01100000 |" in readme  # pre, post, gap
    sliding_bpb = 1.1241 - 0.01 * BPB_PER_NAT
    assert f"| 42 | sliding | {1.1241 / BPB_PER_NAT - 0.01:.8f} | {sliding_bpb:.8f} | 38.0 | 60.8 (7.2 + 50.5 + 3.0) |" in readme
    assert readme.count("| plain |") == 3 and readme.count("| sliding |") == 3

    code, out, _ = cli(capsys, "validate", record)
    assert code == 0 and out.strip() == f"ok {record}"


def test_config_yaml_holds_the_first_runs_config(record: Path):
    import yaml
    config = yaml.safe_load((record / "config.yaml").read_text())
    assert config["train"]["seed"] == 1337 and config["optim"]["matrix_lr"] == 0.02


def test_record_without_export_scores_pre_quant(tmp_path: Path, script: Path):
    runs = [make_run(tmp_path / "run", script, 1, 1.2, quant_gap=None),
            make_run(tmp_path / "run", script, 2, 1.21, quant_gap=None, date="2026-11-23")]
    dest = records.write_record("track_local", "bf16_only", runs,
                                records_dir=tmp_path / "records", script=script)
    assert dest.name == "2026-11-23_bf16_only"  # dated by the last run
    sub = json.loads((dest / "submission.json").read_text())
    assert sub["val_bpb"] == pytest.approx(1.205, abs=1e-8)
    assert sub["bytes_total"] == sub["bytes_code"]
    assert "| n/a | n/a |" in (dest / "README.md").read_text()
    assert records.validate_record(dest) == []


def edit_submission(record: Path, **changes) -> None:
    path = record / "submission.json"
    sub = json.loads(path.read_text())
    sub.update(changes)
    path.write_text(json.dumps(sub))


def remove_submission(record: Path) -> None:
    (record / "submission.json").unlink()


def wrong_type(record: Path) -> None:
    edit_submission(record, bytes_total="13873579")


def over_limit(record: Path) -> None:
    sub = json.loads((record / "submission.json").read_text())
    for result in sub["seed_results"].values():
        result["artifact_bytes"] = 16_000_001
    edit_submission(record, bytes_total=16_000_001, seed_results=sub["seed_results"])


def log_disagrees(record: Path) -> None:
    log = record / "train_seed42.log"
    lines = log.read_text().splitlines()
    lines[-1] = lines[-1][:-1] + ("1" if lines[-1][-1] != "1" else "2")
    log.write_text("\n".join(lines) + "\n")


def code_bytes_differ(record: Path) -> None:
    with open(record / "train_gpt.py", "a") as f:
        f.write("# edited after the run\n")


def code_edited_same_size(record: Path) -> None:
    script = record / "train_gpt.py"
    script.write_text(script.read_text().replace("training", "TRAINING"))


def results_missing(record: Path) -> None:
    (record / "results" / "seed42.json").unlink()


def malformed_json(record: Path) -> None:
    (record / "submission.json").write_text('{"author": "A", "val_bpb": 1.13,')


def mean_disagrees(record: Path) -> None:
    edit_submission(record, val_bpb=1.0)


@pytest.mark.parametrize("break_record, expected", [
    (remove_submission, "submission.json is missing"),
    (wrong_type, "field 'bytes_total': expected integer, got string"),
    (over_limit, "exceeds the 16,000,000-byte artifact limit"),
    (log_disagrees, "train_seed42.log: final line val_bpb"),
    (code_bytes_differ, "train_gpt.py has"),
    (code_edited_same_size, "train_gpt.py has sha256"),
    (results_missing, "results/seed42.json is missing (seed 42 is in seed_results)"),
    (malformed_json, "submission.json is not valid JSON"),
    (mean_disagrees, "val_bpb 1.0 disagrees with seed_results"),
])
def test_broken_records_are_reported(record: Path, capsys, break_record, expected):
    break_record(record)
    problems = records.validate_record(record)
    assert any(expected in p for p in problems), problems

    code, out, err = cli(capsys, "validate", record.parent.parent)  # a tree of records
    assert code == 1
    assert f"{record}: " in out and expected in out
    assert "Traceback" not in out + err


def test_validate_tree_mixes_ok_and_bad(tmp_path: Path, script: Path, record: Path, capsys):
    run = make_run(tmp_path / "r2", script, 7, 1.2)
    other = records.write_record("track_local", "second", [run],
                                 records_dir=tmp_path / "records", script=script)
    code_bytes_differ(other)
    code, out, _ = cli(capsys, "validate", tmp_path / "records")
    assert code == 1
    assert f"ok {record}" in out and f"{other}: train_gpt.py has" in out


def test_validate_finds_a_record_missing_its_marker_files(record: Path, capsys):
    (record / "submission.json").unlink()
    (record / "train_gpt.py").unlink()
    code, out, _ = cli(capsys, "validate", record.parent.parent)
    assert code == 1 and f"{record}: submission.json is missing" in out
    assert f"{record}: train_gpt.py is missing" in out


def test_code_edited_same_size_is_named_by_sha_not_by_size(record: Path):
    code_edited_same_size(record)
    expected = json.loads((record / "results" / "seed42.json").read_text())["code_sha256"]
    problems = records.validate_record(record)
    assert len(problems) == 3 and not any("bytes" in p for p in problems), problems
    assert any("results/seed42.json has code_sha256 " + expected in p for p in problems)


def test_validate_at_the_repo_root_finds_only_the_records(record: Path, script: Path, capsys):
    repo = record.parent.parent.parent  # tmp_path: train_gpt.py and records/ side by side
    assert (repo / "train_gpt.py").is_file()
    code, out, _ = cli(capsys, "validate", repo)
    assert code == 0 and out == f"ok {record}\n"


def test_validate_path_without_records(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    code, out, _ = cli(capsys, "validate", tmp_path / "empty", tmp_path / "nope")
    assert code == 1 and "no record folders found" in out


def test_wrong_seed_result_type_names_seed_and_field(record: Path):
    sub = json.loads((record / "submission.json").read_text())
    sub["seed_results"]["42"]["steps"] = 3600.5
    (record / "submission.json").write_text(json.dumps(sub))
    assert records.validate_record(record) == [
        "submission.json: seed_results['42']: field 'steps': expected integer, got number (3600.5)"]


# ---------------------------------------------------------------------------------------------
# write refusals


def test_write_refuses_a_script_that_did_not_run(tmp_path: Path, script: Path, capsys):
    runs = make_runs(tmp_path / "run", script, [1.12, 1.13])
    edited = tmp_path / "edited_train_gpt.py"
    edited.write_text(SCRIPT_TEXT + "# one more line\n")
    with pytest.raises(records.RecordError, match="is not the script that ran"):
        records.write_record("track_local", "x", runs, records_dir=tmp_path / "records",
                             script=edited)
    code, _, err = cli(capsys, "write", "--track", "track_local", "--name", "x", "--results", *runs,
                       "--records-dir", tmp_path / "records", "--script", edited)
    assert code == 2 and "must hold the exact train_gpt.py" in err and "Traceback" not in err
    assert not (tmp_path / "records").exists()


def test_write_refuses_runs_with_different_configs(tmp_path: Path, script: Path):
    changed = json.loads(json.dumps(CONFIG))
    changed["optim"]["matrix_lr"] = 0.03
    runs = [make_run(tmp_path / "a", script, 1, 1.12),
            make_run(tmp_path / "b", script, 2, 1.13, config=changed)]
    with pytest.raises(records.RecordError) as info:
        records.write_record("track_local", "x", runs, records_dir=tmp_path / "records",
                             script=script)
    # Only the learning rate is named: the seeds (config.train.seed) may differ.
    assert str(info.value).endswith("differ): config.optim.matrix_lr")


def test_write_accepts_runs_that_differ_only_in_the_run_section(tmp_path: Path, script: Path):
    """sweep.py gives every job its own run.log_dir and run.run_id; wandb settings are tracking."""
    runs = []
    for seed, mode in ((1, "disabled"), (2, "offline")):
        config = json.loads(json.dumps(CONFIG))
        config["run"] = {"run_id": f"job{seed}", "log_dir": f"sweeps/g/train.seed={seed}",
                         "wandb_mode": mode, "wandb_group": "g"}
        runs.append(make_run(tmp_path / f"job{seed}", script, seed, 1.12, config=config))
    dest = records.write_record("track_local", "sweep", runs, records_dir=tmp_path / "records",
                                script=script)
    assert records.validate_record(dest) == []
    assert "apart from `train.seed` and `run.*`" in (dest / "README.md").read_text()


@pytest.mark.parametrize("present, null", [("q_val_bpb", "q_val_loss"),
                                           ("q_val_loss", "q_val_bpb")])
def test_write_refuses_half_a_round_trip_score(tmp_path: Path, script: Path, capsys, present, null):
    path = make_run(tmp_path / "run", script, 1, 1.12, **{null: None})
    code, _, err = cli(capsys, "write", "--track", "track_local", "--name", "x", "--results", path,
                       "--records-dir", tmp_path / "records", "--script", script)
    assert code == 2 and "Traceback" not in err
    assert f"{path}: field '{present}' is set but '{null}' is null" in err
    assert not (tmp_path / "records").exists()


def test_write_refuses_an_export_that_did_not_finish(tmp_path: Path, script: Path):
    """export.enabled but no round-trip score: results.json of a run whose export crashed."""
    config = json.loads(json.dumps(CONFIG))
    config["export"] = {"enabled": True}
    path = make_run(tmp_path / "run", script, 1, 1.12, quant_gap=None, config=config)
    with pytest.raises(records.RecordError) as info:
        records.write_record("track_local", "x", [path], records_dir=tmp_path / "records",
                             script=script)
    assert str(info.value) == (f"{path}: config.export.enabled is true but q_val_loss and "
                               "q_val_bpb are null: the export did not finish, so the run has no "
                               "round-trip score")


def test_write_refuses_a_config_without_export_enabled(tmp_path: Path, script: Path):
    path = make_run(tmp_path / "run", script, 1, 1.12)
    results = json.loads(path.read_text())
    del results["config"]["export"]
    path.write_text(json.dumps(results))
    with pytest.raises(records.RecordError, match="config.export.enabled is missing"):
        records.write_record("track_local", "x", [path], records_dir=tmp_path / "records",
                             script=script)


@pytest.mark.parametrize("track", ["track_10min_16mb", "track_non_record_16mb"])
@pytest.mark.parametrize("kwargs, named", [
    (dict(quant_gap=None), "q_val_loss, q_val_bpb, artifact_sha256 are null"),
    (dict(artifact_sha256=None), "artifact_sha256 is null"),
])
def test_16mb_tracks_need_a_quantized_artifact(tmp_path: Path, script: Path, track, kwargs, named):
    runs = make_runs(tmp_path / "run", script, [1.12, 1.13], **ON_8XH100, **kwargs)
    with pytest.raises(records.RecordError) as info:
        records.write_record(track, "x", runs, records_dir=tmp_path / "records", script=script)
    assert f"{runs[0]}: {named}: {track} needs a quantized artifact" in str(info.value)
    # The same runs are fine on track_local, where a bf16 score is allowed.
    records.write_record("track_local", "x", runs, records_dir=tmp_path / "records", script=script)


def test_write_on_the_10min_track_accepts_a_run_within_its_rules(tmp_path: Path, script: Path):
    runs = make_runs(tmp_path / "run", script, [1.12, 1.13], **ON_8XH100, train_time_s=599.9,
                     eval_time_s=600.0)
    dest = records.write_record("track_10min_16mb", "x", runs, records_dir=tmp_path / "records",
                                script=script)
    assert records.validate_record(dest) == []


@pytest.mark.parametrize("fields, named", [
    (dict(world_size=1, hardware="1xNVIDIA H100 80GB HBM3"),
     ["world_size is 1", "hardware is '1xNVIDIA H100 80GB HBM3'"]),
    (dict(world_size=8, hardware="8xNVIDIA A100-SXM4-80GB"),
     ["hardware is '8xNVIDIA A100-SXM4-80GB'"]),
    (dict(world_size=8, hardware="8xNVIDIA H100 PCIe"), ["hardware is '8xNVIDIA H100 PCIe'"]),  # not SXM
    (dict(world_size=8, hardware="8xNVIDIA H100 NVL"), ["hardware is '8xNVIDIA H100 NVL'"]),  # not SXM
    (dict(**ON_8XH100, data_name="debian_docs_sp8192"), ["data_name is 'debian_docs_sp8192'"]),
    (dict(**ON_8XH100, train_time_s=600.5), ["train_time_s is 600.5"]),
    (dict(**ON_8XH100, training_clock_s=600.4), ["training_clock_s is 600.4"]),  # calibration on train data counts
    (dict(**ON_8XH100, training_clock_s=None), ["training_clock_s is None"]),  # results from before it was recorded
    (dict(**ON_8XH100, eval_time_s=900.0), ["eval_time_s is 900.0"]),
    (dict(**ON_8XH100, eval_time_s=None), ["eval_time_s is null"]),
])
def test_write_checks_the_10min_track_rules(tmp_path: Path, script: Path, fields, named):
    runs = make_runs(tmp_path / "run", script, [1.12, 1.13], **fields)
    with pytest.raises(records.RecordError) as info:
        records.write_record("track_10min_16mb", "x", runs, records_dir=tmp_path / "records",
                             script=script)
    message = str(info.value)
    for name in named:
        assert f"{runs[0]}: {name}; track_10min_16mb requires" in message
    # Only these rules are named (write stops at the first run's problems).
    assert message.count("; track_10min_16mb requires") == len(named)
    assert "track_local" in message
    records.write_record("track_local", "x", runs, records_dir=tmp_path / "records", script=script)


@pytest.mark.parametrize("hardware, sxm", [
    ("8xNVIDIA H100 80GB HBM3", True), ("8xNVIDIA H100 SXM5 80GB", True),
    ("8xNVIDIA H100 PCIe", False), ("8xNVIDIA H100 NVL", False), ("8xnvidia h100 pcie", False),
    ("7xNVIDIA H100 80GB HBM3", False), ("8xNVIDIA H200", False), ("8xNVIDIA A100-SXM4-80GB", False),
])
def test_the_10min_track_hardware_is_8_h100_sxm(hardware, sxm):
    results = dict(world_size=8, hardware=hardware, data_name="fineweb10B_sp8192", train_time_s=590.0,
                   training_clock_s=595.0, eval_time_s=300.0)
    problems = records.timed_track_problems("r.json", results)
    assert problems == ([] if sxm else [
        f"r.json: hardware is {hardware!r}; track_10min_16mb requires 8 H100 SXM GPUs ('8x<H100 device name>', "
        "not a PCIe or NVL card): use track_non_record_16mb or track_local"])


def test_the_reviewers_cpu_run_cannot_enter_the_10min_track(tmp_path: Path, script: Path, capsys):
    runs = make_runs(tmp_path / "run", script, [1.12, 1.13, 1.125], hardware="1xCPU",
                     data_name="debian_docs_sp8192", train_time_s=5000.0, eval_time_s=900.0)
    code, _, err = cli(capsys, "write", "--track", "track_10min_16mb", "--name", "cpu",
                       "--results", *runs, "--records-dir", tmp_path / "records",
                       "--script", script)
    assert code == 2 and not (tmp_path / "records").exists()
    for named in ("world_size is 1", "hardware is '1xCPU'", "data_name is 'debian_docs_sp8192'",
                  "train_time_s is 5000.0", "eval_time_s is 900.0"):
        assert f"{runs[0]}: {named}" in err, named


def test_validate_checks_track_rules_on_the_stored_results(tmp_path: Path, record: Path):
    """A 1xH100 track_local record moved into track_10min_16mb is reported and not ranked."""
    moved = tmp_path / "records" / "track_10min_16mb" / record.name
    moved.parent.mkdir()
    record.rename(moved)
    edit_submission(moved, track="track_10min_16mb")
    expected = []
    for seed in (1337, 42, 2025):
        expected += [
            f"results/seed{seed}.json: world_size is 1; track_10min_16mb requires 8 GPUs "
            "(8xH100): use track_non_record_16mb or track_local",
            f"results/seed{seed}.json: hardware is '1xNVIDIA H100 80GB HBM3'; track_10min_16mb "
            "requires 8 H100 SXM GPUs ('8x<H100 device name>', not a PCIe or NVL card): use "
            "track_non_record_16mb or track_local"]
    assert records.validate_record(moved) == expected
    board = records.leaderboard(tmp_path / "records")
    assert "## track_10min_16mb" not in board and "## Not ranked" in board


def test_write_refuses_unknown_track(tmp_path: Path, script: Path, capsys):
    runs = make_runs(tmp_path / "run", script, [1.12])
    code, _, err = cli(capsys, "write", "--track", "track_8xh100", "--name", "x",
                       "--results", *runs, "--script", script)
    assert code == 2
    assert all(track in err for track in records.TRACKS)


def test_write_refuses_to_overwrite_without_force(tmp_path: Path, script: Path, record: Path):
    runs = make_runs(tmp_path / "run2", script, [1.10, 1.11])
    kwargs = dict(records_dir=tmp_path / "records", script=script)
    with pytest.raises(records.RecordError, match="already exists"):
        records.write_record("track_local", "gdn_hybrid_3seed", runs, **kwargs)
    dest = records.write_record("track_local", "gdn_hybrid_3seed", runs, force=True, **kwargs)
    assert dest == record
    assert json.loads((dest / "submission.json").read_text())["seeds"] == [1337, 42]
    assert not (dest / "train_seed2025.log").exists()
    assert records.validate_record(dest) == []


def test_write_refuses_a_log_that_does_not_end_with_the_final_line(tmp_path: Path, script: Path):
    results = make_run(tmp_path / "run", script, 1, 1.12)
    log = tmp_path / "run" / "logs" / "gdn_s1.txt"
    log.write_text("\n".join(log.read_text().splitlines()[:-1]) + "\n")  # truncated run
    with pytest.raises(records.RecordError, match="wrong or truncated log"):
        records.write_record("track_local", "x", [results], records_dir=tmp_path / "records",
                             script=script)


def test_write_reports_malformed_results(tmp_path: Path, script: Path, capsys):
    bad = tmp_path / "bad.results.json"
    bad.write_text("{")
    code, _, err = cli(capsys, "write", "--track", "track_local", "--name", "x",
                       "--results", bad, "--script", script)
    assert code == 2 and "is not valid JSON" in err
    incomplete = tmp_path / "incomplete.results.json"
    incomplete.write_text(json.dumps({"run_id": "r", "seed": "1"}))
    code, _, err = cli(capsys, "write", "--track", "track_local", "--name", "x",
                       "--results", incomplete, "--script", script)
    assert code == 2 and "field 'seed': expected integer, got string" in err
    assert "field 'final_line' is missing" in err


def test_write_of_an_oversized_run_reports_the_limit(tmp_path: Path, script: Path, capsys):
    runs = make_runs(tmp_path / "run", script, [1.12, 1.13], bytes_model=16_000_000)
    code, out, _ = cli(capsys, "write", "--track", "track_local", "--name", "big",
                       "--results", *runs, "--records-dir", tmp_path / "records",
                       "--script", script)
    assert code == 1 and "exceeds the 16,000,000-byte artifact limit" in out


# ---------------------------------------------------------------------------------------------
# leaderboard


def folder_bytes(record: Path) -> dict[str, bytes]:
    return {str(p.relative_to(record)): p.read_bytes() for p in sorted(record.rglob("*")) if p.is_file()}


def test_add_puts_new_seeds_into_the_record_in_place(tmp_path: Path, script: Path, record: Path, capsys):
    before = folder_bytes(record)
    new = [make_run(tmp_path / "more", script, 7, 1.1250, date="2026-11-30"),
           make_run(tmp_path / "more", script, 8, 1.1220)]
    code, out, err = cli(capsys, "add", record, "--results", *new, "--command", "torchrun ... train.seed=7")
    assert (code, err) == (0, ""), err
    assert out == f"added seeds to {record}\n"
    assert records.validate_record(record) == []
    sub = json.loads((record / "submission.json").read_text())
    assert sub["seeds"] == [1337, 42, 2025, 7, 8]
    scores = [1.1234, 1.1241, 1.1229, 1.1250, 1.1220]  # pre-quant bpb + make_run's gap 0.011
    assert sub["val_bpb"] == pytest.approx(np.mean(scores) + 0.011, abs=1e-8)
    assert sub["val_bpb_std"] == pytest.approx(np.std(scores, ddof=1), abs=1e-8)
    assert (sub["name"], sub["author"], sub["blurb"], sub["date"]) == (
        "gdn_hybrid_3seed", "A. Tester", "GDN hybrid, int6 GPTQ", "2026-11-30")  # the day it was complete
    after = folder_bytes(record)
    for name in ("train_gpt.py", "config.yaml", "train_seed1337.log", "train_seed42.log", "train_seed2025.log",
                 "results/seed1337.json", "results/seed42.json", "results/seed2025.json"):
        assert after[name] == before[name], name  # the held seeds' files are kept byte for byte
    assert after["train_seed7.log"] == (tmp_path / "more/logs/gdn_s7.txt").read_bytes()
    assert records.readme_commands(record / "README.md") == ["torchrun --nproc_per_node=1 train_gpt.py",
                                                             "torchrun ... train.seed=7"]
    assert "Score (mean over 5 seeds)" in (record / "README.md").read_text()
    assert not list(record.parent.glob(".*partial"))


def other_script(tmp_path: Path, script: Path) -> Path:
    path = tmp_path / "other" / "train_gpt.py"
    path.parent.mkdir()
    path.write_text(SCRIPT_TEXT.replace("training", "trainin'"))
    return path


def other_config() -> dict:
    changed = json.loads(json.dumps(CONFIG))
    changed["optim"]["matrix_lr"] = 0.03
    return changed


@pytest.mark.parametrize("make_new, expected", [
    (lambda tmp, script: make_run(tmp / "n", script, 42, 1.12), "seed 42 already in"),
    (lambda tmp, script: make_run(tmp / "n", script, 7, 1.12, config=other_config()),
     "differ in more than the seed (train.seed and run.* may differ): config.optim.matrix_lr"),
    (lambda tmp, script: make_run(tmp / "n", other_script(tmp, script), 7, 1.12),
     "is not the script that ran"),
    (lambda tmp, script: make_run(tmp / "n", script, 7, 1.12, bytes_model=16_000_000), "exceeds"),
])
def test_add_refuses_runs_that_cannot_join_and_changes_nothing(tmp_path: Path, script: Path, record: Path,
                                                               capsys, make_new, expected):
    before = folder_bytes(record)
    code, out, err = cli(capsys, "add", record, "--results", make_new(tmp_path, script))
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert folder_bytes(record) == before


def test_add_and_rerun_refuse_an_invalid_record(tmp_path: Path, script: Path, record: Path, capsys):
    edit_submission(record, val_bpb=1.0)
    for argv in (["add", record, "--results", make_run(tmp_path / "n", script, 7, 1.12)],
                 ["rerun", record, "--seed", "7"]):
        code, out, err = cli(capsys, *argv)
        assert code == 2 and f"{record} is not a valid record (1 problem, first: val_bpb 1.0 disagrees" in err, err


def test_rerun_refuses_a_seed_the_record_holds(record: Path, capsys):
    code, out, err = cli(capsys, "rerun", record, "--seed", "2025")
    assert code == 2 and "seed 2025 is already in" in err and "[1337, 42, 2025]" in err


def test_rerun_runs_the_records_script_and_config_at_a_new_seed(tmp_path: Path, synthetic_data):
    """A real (tiny, CPU) record; rerun's command, run as printed from the repository root, trains with the record's
    own train_gpt.py and config at the new seed, and add takes the run: same script, same config but the seed."""
    from conftest import TINY, run_trainer
    args = TINY + synthetic_data["overrides"] + ["train.max_steps=6", "train.schedule=steps",
                                                 "train.max_wallclock_seconds=600", "run.save_model=false"]
    _, first = run_trainer(args, log_dir=tmp_path / "logs")
    record = records.write_record("track_local", "tiny", [tmp_path / "logs" / f"{first['run_id']}.results.json"],
                                  records_dir=tmp_path / "records", script=REPO / "train_gpt.py",
                                  commands=["python -m torch.distributed.run ... (tests/test_records.py)"])
    command = records.rerun_command(record, 5, log_dir=str(tmp_path / "logs"), run_id="reseed5")
    argv = shlex.split(command)
    assert argv[:3] == ["torchrun", "--standalone", "--nproc_per_node=1"]
    assert argv[3:] == [str(record / "train_gpt.py"), "--config", str(record / "config.yaml"), "train.seed=5",
                        f"run.log_dir={tmp_path / 'logs'}", "run.run_id=reseed5"]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *argv[1:]], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "logs" / "reseed5.results.json").read_text())
    assert again["seed"] == 5 and again["code_sha256"] == first["code_sha256"] == records.sha256_of(REPO / "train_gpt.py")
    assert again["val_bpb"] != first["val_bpb"]  # the seed took effect
    records.add_seeds(record, [tmp_path / "logs" / "reseed5.results.json"], commands=[command])
    assert records.validate_record(record) == []
    assert json.loads((record / "submission.json").read_text())["seeds"] == [first["seed"], 5]
    assert records.readme_commands(record / "README.md")[-1] == command


def test_leaderboard_groups_by_track_and_ranks_by_val_bpb(tmp_path: Path, script: Path):
    entries = [("track_local", "mid", 1.13), ("track_local", "best", 1.11),
               ("track_local", "worst", 1.15), ("track_10min_16mb", "record", 1.12)]
    for i, (track, name, bpb) in enumerate(entries):
        runs = make_runs(tmp_path / f"run{i}", script, [bpb, bpb + 0.001], **ON_8XH100)
        records.write_record(track, name, runs, records_dir=tmp_path / "records", script=script)
    broken = records.write_record("track_local", "broken",
                                  make_runs(tmp_path / "run_b", script, [1.0, 1.0]),
                                  records_dir=tmp_path / "records", script=script)
    code_bytes_differ(broken)

    board = records.leaderboard(tmp_path / "records")
    sections = board.split("## ")
    assert [s.splitlines()[0] for s in sections[1:]] == [
        "track_10min_16mb", "track_local", "Not ranked (failed validation)"]
    local_rows = [line for line in sections[2].splitlines() if line.startswith("| ") and
                  line[2].isdigit()]
    assert [row.split(" | ")[2] for row in local_rows] == ["best", "mid", "worst"]
    assert [row.split(" | ")[0] for row in local_rows] == ["| 1", "| 2", "| 3"]
    assert "1.12150000 ± 0.00070711 (n=2)" in sections[2]  # best: mean of 1.121, 1.122
    assert "broken" in sections[3] and "train_gpt.py has" in sections[3]
    assert "8xNVIDIA H100 80GB HBM3" in board and "gdn_hybrid" in board


def test_leaderboard_cli(record: Path, capsys):
    code, out, _ = cli(capsys, "leaderboard", "--records-dir", record.parent.parent,
                       "--format", "markdown")
    assert code == 0 and "## track_local" in out and "gdn_hybrid_3seed" in out
    code, _, err = cli(capsys, "leaderboard", "--records-dir", record.parent / "missing")
    assert code == 2 and "does not exist" in err


# ---------------------------------------------------------------------------------------------
# statistics


@pytest.mark.parametrize("df", [0.5, 1.0, 1.3, 2.0, 2.5, 3.7, 4.0, 7.9, 30.0, 99.5, 150.0,
                                1e3, 1e5, 1e6])
def test_student_t_sf_matches_scipy(df):
    for t in [-40.0, -5.0, -1.5, -0.3, 0.0, 0.05, 0.3, 1.0, 2.0, 3.5, 7.0, 20.0, 300.0]:
        expected = stats.t.sf(t, df)
        assert records.student_t_sf(t, df) == pytest.approx(expected, rel=1e-8, abs=1e-300), (t, df)


def test_student_t_sf_limits():
    assert records.student_t_sf(1.7, math.inf) == pytest.approx(stats.norm.sf(1.7), rel=1e-12)
    assert records.student_t_sf(math.inf, 3.0) == 0.0
    assert records.student_t_sf(-math.inf, 3.0) == 1.0
    assert records.student_t_sf(0.0, 2.2) == 0.5
    with pytest.raises(ValueError):
        records.student_t_sf(1.0, 0.0)


WELCH_CASES = [
    # (new, old, margin)
    ([2.9012, 2.9031, 2.9008], [2.9150, 2.9137, 2.9161], 0.005),
    ([2.9012, 2.9031, 2.9008], [2.9150, 2.9137, 2.9161], 0.0),
    ([1.101, 1.108, 1.099, 1.104, 1.102], [1.112, 1.109], 0.002),
    ([3.0, 3.01, 3.02], [2.99, 3.0, 3.04], 0.005),  # NEW is not better: large p
    ([2.5, 2.5001], [2.52, 2.56, 2.51, 2.58], 0.005),  # very unequal variances
]


@pytest.mark.parametrize("new, old, margin", WELCH_CASES)
def test_welch_margin_test_matches_scipy(new, old, margin):
    result = records.welch_margin_test(new, old, margin)
    shifted = stats.ttest_ind(np.asarray(new) + margin, old, equal_var=False, alternative="less")
    assert result["t"] == pytest.approx(-shifted.statistic, rel=1e-8)
    assert result["p"] == pytest.approx(shifted.pvalue, rel=1e-8)
    assert result["df"] == pytest.approx(shifted.df, rel=1e-10)
    unshifted = stats.ttest_ind(new, old, equal_var=False, alternative="less")
    assert result["p_unshifted"] == pytest.approx(unshifted.pvalue, rel=1e-8)
    assert result["clears"] == (result["p"] < 0.01)


def test_welch_margin_test_needs_two_values_and_some_variance():
    with pytest.raises(ValueError, match="at least 2"):
        records.welch_margin_test([1.0], [1.1, 1.2])
    with pytest.raises(ValueError, match="zero variance"):
        records.welch_margin_test([1.0, 1.0], [1.1, 1.1])


def test_reference_fact_shift_raises_p():
    """REFERENCE.md: a past record had p=0.0008 unshifted but p=0.0095 once shifted by 0.005.
    Build 3-vs-3 seeds with equal spread (Welch df = 4) that reproduce both numbers."""
    df, margin = 4.0, 0.005
    t_unshifted, t_shifted = stats.t.isf(0.0008, df), stats.t.isf(0.0095, df)
    se = margin / (t_unshifted - t_shifted)
    spread = se / math.sqrt(2 / 3)  # sample std of (-s, 0, s) is s; se^2 = 2 s^2 / 3
    old = [2.95 - spread, 2.95, 2.95 + spread]
    new = [x - t_unshifted * se for x in old]
    result = records.welch_margin_test(new, old, margin)
    assert result["df"] == pytest.approx(df)
    assert result["p_unshifted"] == pytest.approx(0.0008, rel=1e-6)
    assert result["p"] == pytest.approx(0.0095, rel=1e-6)
    assert result["p_unshifted"] < result["p"] < 0.01 and result["clears"]


def test_compare_cli(tmp_path: Path, script: Path, capsys):
    kwargs = dict(records_dir=tmp_path / "records", script=script)
    old = records.write_record("track_local", "old", make_runs(
        tmp_path / "o", script, [1.1300, 1.1310, 1.1295]), **kwargs)
    new = records.write_record("track_local", "new", make_runs(
        tmp_path / "n", script, [1.1200, 1.1205, 1.1195]), **kwargs)
    code, out, _ = cli(capsys, "compare", new, old)
    assert code == 0
    for field in ("n=3", "margin: 0.005", "t=", "df=", "p=", "unshifted", "clears: "):
        assert field in out
    old_loss = [(b + 0.011) / BPB_PER_NAT for b in (1.1300, 1.1310, 1.1295)]
    new_loss = [(b + 0.011) / BPB_PER_NAT for b in (1.1200, 1.1205, 1.1195)]
    expected = records.welch_margin_test([round(x, 8) for x in new_loss],
                                         [round(x, 8) for x in old_loss], 0.005)
    assert f"clears: {'yes' if expected['clears'] else 'no'}" in out
    assert f"p={expected['p']:.6g}" in out

    code, out, _ = cli(capsys, "compare", old, new, "--metric", "val_bpb", "--margin", "0")
    assert code == 0 and "clears: no" in out
    code, _, err = cli(capsys, "compare", new, tmp_path / "nowhere")
    assert code == 2 and "does not exist" in err and "Traceback" not in err


@pytest.mark.parametrize("broken", ["new", "old"])
def test_compare_refuses_an_invalid_record(tmp_path: Path, script: Path, capsys, broken):
    """A record over the artifact limit must not be reported as clearing the bar."""
    kwargs = dict(records_dir=tmp_path / "records", script=script)
    sizes = {"new": 13_812_345, "old": 13_812_345, broken: 19_000_000}
    old = records.write_record("track_local", "old", make_runs(
        tmp_path / "o", script, [1.1300, 1.1310, 1.1295], bytes_model=sizes["old"]), **kwargs)
    new = records.write_record("track_local", "new", make_runs(
        tmp_path / "n", script, [1.1200, 1.1205, 1.1195], bytes_model=sizes["new"]), **kwargs)
    code, out, err = cli(capsys, "compare", new, old)
    invalid = {"new": new, "old": old}[broken]
    assert code == 2 and out == "" and "Traceback" not in err
    assert f"{invalid} is not a valid record: bytes_total 19,0" in err
    assert "exceeds the 16,000,000-byte artifact limit" in err


def test_module_imports_neither_torch_nor_scipy():
    code = ("import sys, records; "
            "assert not {'torch', 'scipy', 'numpy'} & set(sys.modules), 'heavy import'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_compare_takes_a_record_in_the_challenges_own_format(tmp_path: Path, script: Path, capsys):
    """The usual old side of a comparison is a record from the challenge repository: submission.json with
    seed_results (no results/ folder). It needs per-seed values and bytes_total within the limit."""
    new = records.write_record("track_local", "new", make_runs(tmp_path / "n", script, [1.1200, 1.1205, 1.1195]),
                               records_dir=tmp_path / "records", script=script)
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    losses = {"1337": 1.9402, "42": 1.9411, "2025": 1.9398}
    sub = {"name": "attention baseline", "val_loss": 1.9404, "val_bpb": 1.1491, "bytes_total": 15_863_489,
           "seed_results": {seed: {"val_loss": v, "val_bpb": v * 0.5922} for seed, v in losses.items()}}
    (upstream / "submission.json").write_text(json.dumps(sub))
    code, out, err = cli(capsys, "compare", new, upstream)
    assert code == 0, err
    new_loss = [round((b + 0.011) / BPB_PER_NAT, 8) for b in (1.1200, 1.1205, 1.1195)]
    assert f"p={records.welch_margin_test(new_loss, list(losses.values()), 0.005)['p']:.6g}" in out
    for broken, named in [(dict(bytes_total=16_000_001), "bytes_total 16000001"),
                          (dict(seed_results={"1": {"val_bpb": 1.1}}), "seed_results 1: no numeric val_loss")]:
        (upstream / "submission.json").write_text(json.dumps({**sub, **broken}))
        code, out, err = cli(capsys, "compare", new, upstream)
        assert code == 2 and out == "" and f"{upstream} is not a valid record: submission.json {named}" in err

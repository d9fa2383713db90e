"""End-to-end runs of train_gpt.py under torchrun on CPU (gloo)."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train_gpt as tg
from conftest import ROOT, TINY, run_trainer


def train_losses(stdout: str) -> dict[int, float]:
    return {int(m[1]): float(m[2]) for m in re.finditer(r"^step:(\d+)/\d+ train_loss:([\d.]+)", stdout, re.M)}


def test_two_ranks_equal_one_rank_with_accumulation(synthetic_data, tmp_path):
    """Same seed, same global batch, the step-count schedule (budget equivalence): 2 gloo ranks x 1 micro step ==
    1 rank x 2 accumulated micro steps, LR warmdown included."""
    args = TINY + synthetic_data["overrides"] + ["train.max_steps=6", "train.global_batch_tokens=512",
                                                 "train.micro_batch_seqs=4", "train.max_wallclock_seconds=600",
                                                 "train.schedule=steps"]
    out1, res1 = run_trainer(args, nproc=1, log_dir=tmp_path)
    out2, res2 = run_trainer(args, nproc=2, log_dir=tmp_path)
    assert "grad_accum_steps:2" in out1 and "grad_accum_steps:1" in out2 and "world_size:2" in out2
    assert "lr_scale:0.2499" in out1 and "lr_scale:0.2499" in out2  # the warmdown ran on both
    l1, l2 = train_losses(out1), train_losses(out2)
    assert sorted(l1) == sorted(l2) == [1, 2, 3, 4, 5, 6]
    assert all(abs(l1[s] - l2[s]) <= 2e-4 for s in l1), (l1, l2)
    assert res1["steps"] == res2["steps"] == 6
    assert math.isclose(res1["val_loss"], res2["val_loss"], rel_tol=1e-5)


def test_wallclock_cap_stops_training_and_still_evaluates(synthetic_data, tmp_path):
    args = TINY + synthetic_data["overrides"] + ["train.max_steps=100000", "train.max_wallclock_seconds=4",
                                                 "train.log_every=5"]
    out, res = run_trainer(args, log_dir=tmp_path)
    assert "stopping_early: wallclock_cap" in out and 0 < res["steps"] < 100000
    # The clock is read on log steps only: training ends at the first reading past the cap (or at the step predicted
    # to reach it), so every earlier reading is below the cap.
    elapsed = [float(m) for m in re.findall(r"^step:\d+/\d+ .* elapsed:([\d.]+)s", out, re.M)]
    assert elapsed and all(e < 4 for e in elapsed[:-1])
    last = out.strip().splitlines()[-1]
    assert last.startswith("final_bf16_exact val_loss:") and math.isfinite(res["val_bpb"])
    saved = tmp_path / f"{res['run_id']}.config.yaml"
    resolved = tg.dataclasses.asdict(tg.load_config(["--config", str(saved)]))
    assert resolved["run"]["run_id"] == "" and res["config"]["run"]["run_id"] == res["run_id"]
    resolved["run"]["run_id"] = res["run_id"]
    assert resolved == res["config"]  # the run's config file reproduces it, under a new run id
    with pytest.raises(FileExistsError, match=f"run.run_id={res['run_id']} is taken"):  # it used to append to the log
        tg.main(["--config", str(saved), f"run.run_id={res['run_id']}"])
    assert tg.load_config(["--config", str(saved), "run.run_id="]).run.run_id == ""  # "leave it empty", as with Hydra


def test_smoke_run_learns_above_the_entropy_floor(synthetic_data, tmp_path):
    """A short real training run with export: val_bpb ends above the source's entropy floor and well below
    a uniform predictor; the int6 round trip reloads from the artifact file."""
    args = TINY[:-1] + synthetic_data["overrides"] + ["export=int6", "train.max_steps=60", "train.log_every=20",
                                                      "train.schedule=steps",
                                                      "model.model_dim=128", "train.max_wallclock_seconds=600",
                                                      "export.compressors=[lzma]", "export.calib_seqs=8"]
    out, res = run_trainer(args, log_dir=tmp_path)
    floor = synthetic_data["meta"]["entropy_floor_bpb"]
    uniform = res["evals"]["plain"]["tokens"] * math.log2(8192) / res["evals"]["plain"]["bytes"]
    assert floor < res["val_bpb"] < 0.6 * uniform, (floor, res["val_bpb"], uniform)
    assert res["roundtrip_state_exact"] and abs(res["q_val_bpb"] - res["val_bpb"]) < 0.05
    assert res["bytes_code"] == len((ROOT / "train_gpt.py").read_bytes())
    assert res["bytes_model"] == Path(res["artifact_path"]).stat().st_size
    assert res["bytes_total"] == res["bytes_code"] + res["bytes_model"]
    # The score equals the in-process quantized model's eval (the artifact decodes to exactly those weights).
    cfg = tg.config_from_dict(tg.Config, res["config"])
    model = tg.GPT(cfg.model)
    model.load_state_dict(tg.load_artifact(Path(res["artifact_path"]).read_bytes()))
    d = tg.Dist(0, 1, 0, torch.device("cpu"))
    tables = tg.build_byte_tables(cfg.data.tokenizer_path, cfg.model.vocab_size, "cpu")
    again = tg.evaluate(model, tg.load_val_tokens(cfg.data.val_files, d.device), tables, cfg, d, ["plain"])["plain"]
    assert math.isclose(again["val_bpb"], res["q_val_bpb"], rel_tol=1e-9)
    assert out.strip().splitlines()[-1] == res["final_line"] and res["final_line"].startswith("final_int6_roundtrip_exact")
    # The trained weights were saved before export: they reproduce the bf16 score exactly.
    model.load_state_dict(torch.load(Path(res["log_path"]).with_suffix(".model.pt")))
    again = tg.evaluate(model, tg.load_val_tokens(cfg.data.val_files, d.device), tables, cfg, d, ["plain"])["plain"]
    assert math.isclose(again["val_bpb"], res["val_bpb"], rel_tol=1e-9)
    clock_line = float(re.search(r"training_clock_used:([\d.]+)s", out)[1])  # calibration read train data: it counts
    assert res["train_time_s"] < res["training_clock_s"] and abs(res["training_clock_s"] - clock_line) <= 0.05
    train_tokens = int(re.search(r" train_tokens:(\d+) ", out)[1])
    assert math.isclose(res["train_epochs"], res["tokens_seen"] / train_tokens) and res["train_epochs"] < 1
    assert f"train_epochs:{res['train_epochs']:.3f}" in out and "WARNING:train_data_repeated" not in out


def test_grouped_value_heads_train_evaluate_and_export(synthetic_data, tmp_path):
    """model.gdn_v_heads end to end on CPU: TINY's 2 GDN q and k heads over 4 value heads train, the stateful eval
    carries their [B, 4, K, V] states, the gradient split sees them, and the int6 export round-trips exactly."""
    args = TINY[:-1] + synthetic_data["overrides"] + [
        "model.gdn_v_heads=4", "export=int6", "export.compressors=[lzma]", "export.calib_seqs=8",
        "export.keep_float_max_numel=1000", "train.max_steps=10", "train.schedule=steps", "train.max_wallclock_seconds=600",
        "eval.modes=[plain,stateful]", "train.grad_split_every=5"]
    out, res = run_trainer(args, log_dir=tmp_path)
    cfg = tg.config_from_dict(tg.Config, res["config"])
    model = tg.GPT(cfg.model)
    mixer = next(b.mixer for b in model.blocks if b.kind == "G")
    assert (mixer.H, mixer.HV) == (2, 4) and mixer.q_proj.weight.shape[0] * 2 == mixer.v_proj.weight.shape[0]
    assert res["params"] == sum(p.numel() for p in model.parameters())
    assert res["roundtrip_state_exact"] and math.isfinite(res["evals"]["stateful"]["val_bpb"])
    split = [json.loads(line) for line in Path(res["log_path"]).with_suffix(".grad_split.jsonl").read_text().splitlines()]
    assert [row["step"] for row in split] == [0, 5]
    assert split[1]["group"]["gdn.a"] > 0 and math.isclose(sum(split[1]["type"].values()), 1.0)  # step 0: o_proj is 0


def test_repeated_training_data_is_logged(synthetic_data, tmp_path, capsys):
    """Training past the end of the train split wraps around; the run says how many epochs it read, and warns."""
    tokens = tg.TokenStream(str(synthetic_data["dir"] / "synthetic_train_*.bin")).read(0, 1000)
    header = np.zeros(256, "<i4")
    header[:3] = tg.SHARD_MAGIC, tg.SHARD_VERSION, len(tokens)
    (tmp_path / "small_train_000.bin").write_bytes(header.tobytes() + tokens.astype("<u2").tobytes())
    res = tg.main(TINY + synthetic_data["overrides"] + [f"data.train_files={tmp_path}/small_train_*.bin", "train.max_steps=3",
                                                       f"run.log_dir={tmp_path}", "run.run_id=wrap", "run.save_model=false"])
    out = capsys.readouterr().out
    assert res["train_epochs"] == 3 * 512 / 1000 and "train_epochs:1.536 WARNING:train_data_repeated" in out
    assert not (tmp_path / "wrap.model.pt").exists()


def run_failing(args: list[str], tmp_path: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "train_gpt.py"), *args, f"run.log_dir={tmp_path}", "run.run_id=crash"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode != 0
    return proc


def test_a_crash_leaves_its_traceback_in_the_log(synthetic_data, tmp_path):
    run_failing(TINY + synthetic_data["overrides"] + [f"data.val_files={tmp_path}/none_*.bin"], tmp_path)
    log = (tmp_path / "crash.txt").read_text()
    assert "Traceback (most recent call last)" in log and f"FileNotFoundError: no shards match '{tmp_path}/none_*.bin'" in log


def test_calibration_needs_a_sequence_per_rank(synthetic_data, tmp_path):
    """With fewer calibration sequences than ranks, a rank would skip the Hessian all-reduces the others make (a gloo
    size mismatch; on NCCL a hang): refused at start."""
    proc = run_failing(TINY[:-1] + synthetic_data["overrides"] + ["export=int6", "export.calib_seqs=1"], tmp_path, nproc=2)
    assert "config export.calib_seqs: 1 must be >= the world size 2" in proc.stdout + proc.stderr


def test_fla_autotune_picks_are_kept_on_disk_only_when_asked():
    """FLA's autotune keys hold head counts and dims but no sequence length, and by default FLA has Triton keep each
    pick in its cache directory. A pick made on a 64-token input ran FLA's kkt-solve at 12 x 8192 in 621 us instead of
    401 in every later process on the machine (docs/perf.md run HE). Importing train_gpt turns FLA's setting off, so
    each process tunes on its own first call (the trainer's warm-up steps), unless the user set FLA_CACHE_RESULTS;
    the run log says which."""
    pytest.importorskip("fla")
    code = ("import os, torch, train_gpt as tg, fla.utils.env as e; print(e.FLA_CACHE_RESULTS, "
            "'fla_cache_results:' + os.environ['FLA_CACHE_RESULTS'] in tg.environment_report(tg.Dist(0, 1, 0, torch.device('cpu'))))")
    env = {k: v for k, v in os.environ.items() if k != "FLA_CACHE_RESULTS"}
    for user_setting, expected in [(None, "False True"), ("1", "True True")]:
        run_env = env if user_setting is None else dict(env, FLA_CACHE_RESULTS=user_setting)
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[-2:] == expected.split(), (user_setting, proc.stdout)

"""sweep.py and report.py: config composition, job ids and device slots, and a real CPU multirun (torchrun jobs,
one made to fail, a resume, the report read back against each job's results.json and log, wandb offline)."""
import csv
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from conftest import ROOT, TINY

import sweep
import train_gpt as tg

CONF = ROOT / "conf"
GROUPS = ["model", "data", "budget", "export", "experiment"]


def options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_sweep(overrides):
    """The sweep config as a job sees it: with the hydra node, which the sweep name resolves from."""
    sweep.register()  # train_gpt.load_config (used below) stores its own `schema`
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="sweep", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def trainer_part(cfg) -> tg.Config:
    raw = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in sweep.TRAINER_SECTIONS}
    return tg.validate_config(tg.config_from_dict(tg.Config, raw))


# ----------------------------------------------------------------------------------------------------
# Composition

@pytest.mark.parametrize("group", GROUPS)
def test_every_group_option_composes_in_the_sweep_config(group):
    assert options(group)
    for option in options(group):
        cfg = compose_sweep([f"{group}={option}"])
        assert isinstance(trainer_part(cfg), tg.Config)
        launch = OmegaConf.to_object(cfg.launch)
        name = option if group == "experiment" else "adhoc"
        assert cfg.sweep == name and launch.sweep_dir == f"sweeps/{name}" and cfg.hydra.sweep.dir == launch.sweep_dir


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_grid_point_composes(experiment):
    """The GPU presets cannot run here: compose every job of their grid, for the sweep and for the trainer."""
    cfg = compose_sweep([f"experiment={experiment}"])
    params = cfg.hydra.sweeper.params
    assert params, f"experiment {experiment} defines no hydra.sweeper.params"
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()]
            for o in OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])]
    for point in itertools.product(*axes):
        job = trainer_part(compose_sweep([f"experiment={experiment}", *point]))
        assert job == tg.load_config([f"experiment={experiment}", *point])
    if experiment == "gdn_vs_attention":
        assert len(list(itertools.product(*axes))) == 6
        assert job.train.max_wallclock_seconds == 60.0 and job.train.global_batch_tokens == 98304


@pytest.mark.parametrize("override,message", [
    ("launch.nproc_per_nod=2", "Key 'nproc_per_nod' not in 'LaunchConfig'"),
    ("train.max_wallclok_seconds=1", "Key 'max_wallclok_seconds' not in 'TrainConfig'"),
    ("lauch.parallel_jobs=2", "Key 'lauch' not in 'SweepSchema'")])
def test_misspelled_key_fails_at_compose_time_naming_it(override, message):
    with pytest.raises(ConfigCompositionException) as err:
        compose_sweep([override])
    assert override.split("=")[0] in str(err.value) and message in str(err.value.__cause__)


def test_misspelled_key_stops_the_sweep_command(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, str(ROOT / "sweep.py"), "-m", *args,
                                        f"launch.sweep_dir={tmp_path / 'sw'}"], cwd=tmp_path, capture_output=True,
                                       text=True)
    proc = run("launch.nproc_per_nod=2")
    assert proc.returncode == 1 and "Key 'nproc_per_nod' not in 'LaunchConfig'" in proc.stderr
    assert not (tmp_path / "sw").exists()
    proc = run("+launch.nproc_per_nod=2", "model=gdn_hybrid,attention")  # `+` adds keys: caught before launching
    assert proc.returncode == 1 and not list((tmp_path / "sw").glob("*/stdout.txt"))
    assert proc.stdout.count("status:invalid error:unknown config key(s) launch.nproc_per_nod;") == 2 * 2


# ----------------------------------------------------------------------------------------------------
# Job ids, device slots, job environment

def test_job_id_is_the_override_dirname_and_file_safe():
    assert sweep.job_id_from({"model": "attention", "train.seed": "1"}) == "model=attention,train.seed=1"
    assert sweep.job_id_from({}) == "default"
    a, b = sweep.job_id_from({"data.val_files": "/a/*.bin"}), sweep.job_id_from({"data.val_files": "/a/?.bin"})
    assert a != b and re.fullmatch(r"[\w.=,+-]+", a)


@pytest.mark.parametrize("launch,slots", [
    (dict(cuda_visible_devices=["0", "1", "2", "3"]), [["0"], ["1"], ["2"], ["3"]]),
    (dict(cuda_visible_devices=["4", "5", "6", "7"], gpus_per_job=2), [["4", "5"], ["6", "7"]]),
    (dict(cuda_visible_devices=["0", "1", "2"], nproc_per_node=2), [["0", "1"]]),
    (dict(cuda_visible_devices=["0", "1", "2", "3"], parallel_jobs=3), [["0"], ["1"], ["2"]]),
])
def test_gpu_slots(launch, slots):
    assert sweep.device_slots(sweep.LaunchConfig(**launch)) == slots


def test_gpu_list_is_one_value_on_the_command_line():
    launch = OmegaConf.to_object(compose_sweep(["launch.cuda_visible_devices=[2,3]"]).launch)
    assert sweep.device_slots(launch) == [["2"], ["3"]]
    launch = OmegaConf.to_object(compose_sweep(["launch.cuda_visible_devices=3"]).launch)  # one GPU: a bare id
    assert sweep.device_slots(launch) == [["3"]]


def test_slots_without_gpus_and_bad_gpu_lists():
    assert sweep.device_slots(sweep.LaunchConfig(parallel_jobs=2)) == [None, None]  # torch here is CPU-only
    with pytest.raises(ValueError, match="gpus_per_job=8"):
        sweep.device_slots(sweep.LaunchConfig(cuda_visible_devices=["0", "1"], gpus_per_job=8))
    with pytest.raises(ValueError, match=re.escape("launch.cuda_visible_devices=['0', '1', '0'] lists a GPU twice")):
        sweep.device_slots(sweep.LaunchConfig(cuda_visible_devices=["0", "1", "0"]))


@pytest.mark.parametrize("keys,bad", [
    ({"model", "train.seed", "data.val_files", "run.wandb_mode"}, None),
    ({"model", "launch.cuda_visible_devices"}, "launch.cuda_visible_devices"),
    ({"+launch.env.A"}, "+launch.env.A"), ({"launch"}, "launch"), ({"sweep"}, "sweep"), ({"experiment"}, "experiment"),
    ({"run.wandb_group", "run.wandb_mode"}, "run.wandb_group")])
def test_sweeping_a_key_that_takes_one_value_per_sweep_is_an_error(keys, bad):
    if bad is None:
        sweep.check_swept_keys(keys)
    else:
        with pytest.raises(ValueError, match=rf"^cannot sweep {re.escape(bad)}: sweep, experiment, run\.wandb_group "):
            sweep.check_swept_keys(keys)


@pytest.mark.parametrize("override", ["launch.cuda_visible_devices=0,1", "sweep=a,b", "launch.nproc_per_node=1,2"])
def test_sweeping_a_launch_key_stops_the_sweep_command(tmp_path, override):
    proc = subprocess.run([sys.executable, str(ROOT / "sweep.py"), "-m", override, "model=gdn_hybrid,attention",
                           f"launch.sweep_dir={tmp_path / 'sw'}"], cwd=tmp_path, capture_output=True, text=True)
    key = override.split("=")[0]
    assert proc.returncode == 1 and f"sweep.py: cannot sweep {key}: " in proc.stderr
    assert "launch.cuda_visible_devices=[0,1]" in proc.stderr and not (tmp_path / "sw").exists()


def test_job_environment_pins_the_slot(tmp_path):
    job = sweep.Job("j", tmp_path, {}, sweep.LaunchConfig(env={"NCCL_DEBUG": "WARN"}))
    env = sweep.job_env(job, ["2", "3"])
    assert env["CUDA_VISIBLE_DEVICES"] == "2,3" and env["NCCL_DEBUG"] == "WARN" and env["PYTHONUNBUFFERED"] == "1"
    assert sweep.job_env(job, None)["OMP_WAIT_POLICY"] == "PASSIVE"


@pytest.mark.parametrize("code,timeout,status,error", [
    ("print('hi'); raise ValueError('boom')", 0, "failed", "ValueError: boom"),
    ("import time; print('hi', flush=True); time.sleep(60)", 1.0, "timeout", "hi")])
def test_run_job_records_failures_and_timeouts(tmp_path, monkeypatch, code, timeout, status, error):
    monkeypatch.setattr(sweep, "job_command", lambda job: [sys.executable, "-c", code])
    job = sweep.Job("j", tmp_path, {"train.seed": "1"}, sweep.LaunchConfig(timeout_s=timeout, echo=False))
    outcome = sweep.run_job(job, None)
    assert outcome["status"] == status and outcome["error"] == error and outcome["duration_s"] < 30
    assert json.loads((tmp_path / "status.json").read_text()) == outcome
    assert (tmp_path / "stdout.txt").read_text().startswith("hi\n")


# ----------------------------------------------------------------------------------------------------
# A real multirun on CPU

def wandb_records(path: Path) -> list:
    """The records of an offline .wandb file: a LevelDB-style log (7-byte file header, 32 KiB blocks, each record
    a 7-byte header -- crc32, length, type 1 full / 2 first / 3 middle / 4 last -- then a protobuf Record)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def run_sweep(args, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_SILENT="true", WANDB_CONFIG_DIR=str(cwd / "wandb_config"),
               WANDB_CACHE_DIR=str(cwd / "wandb_cache"), WANDB_DATA_DIR=str(cwd / "wandb_data"))
    return subprocess.run([sys.executable, str(ROOT / "sweep.py"), "-m", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=600, env=env)


def read_csv(path: Path) -> dict:
    with open(path) as f:
        return {row.get("job") or row["group"]: row for row in csv.DictReader(f)}


def as_float(text):
    return float(text) if text != "" else None


@pytest.fixture(scope="module")
def cpu_sweep(synthetic_data, tmp_path_factory):
    """2 models x 2 seeds of the tiny model; the job attention/seed 2 reads a validation dir that does not exist
    yet, so it fails; the dir is then created and the same command resumes the sweep."""
    tmp = tmp_path_factory.mktemp("sweep")
    val_root, shards = tmp / "val", synthetic_data["dir"]
    ok_jobs = [("gdn_hybrid", 1), ("gdn_hybrid", 2), ("attention", 1)]
    for preset, seed in ok_jobs:
        (val_root / f"{preset}_s{seed}").mkdir(parents=True)
        (val_root / f"{preset}_s{seed}" / "val_000000.bin").symlink_to(shards / "synthetic_val_000000.bin")
    data = [o for o in synthetic_data["overrides"] if not o.startswith("data.val_files=")]
    args = [a for a in TINY if a != "export=none"] + data + [
        f"data.val_files='{val_root}/${{model.preset}}_s${{train.seed}}/*.bin'",
        "model=gdn_hybrid,attention", "train.seed=1,2", "train.max_steps=6", "train.val_every=3",
        "train.grad_split_every=2", "train.max_wallclock_seconds=600", "export=int6", "export.compressors=[lzma]",
        "export.calib_seqs=8", "run.wandb_mode=offline", "sweep=cpu_test", f"launch.sweep_dir={tmp / 'sweep'}",
        "launch.parallel_jobs=2"]
    first = run_sweep(args, tmp)
    first_statuses = {d.name: json.loads((d / "status.json").read_text()) for d in (tmp / "sweep").iterdir()
                      if (d / "status.json").exists()}
    finished = {d.name: (d / f"{d.name}.results.json").stat().st_mtime_ns
                for d in (tmp / "sweep").iterdir() if (d / f"{d.name}.results.json").exists()}
    first_report, first_groups = read_csv(tmp / "sweep" / "report.csv"), read_csv(tmp / "sweep" / "groups.csv")
    (val_root / "attention_s2").mkdir()
    (val_root / "attention_s2" / "val_000000.bin").symlink_to(shards / "synthetic_val_000000.bin")
    second = run_sweep(args, tmp)
    return dict(dir=tmp / "sweep", first=first, first_statuses=first_statuses, finished=finished, second=second,
                first_report=first_report, first_groups=first_groups)


FAILED = "model=attention,train.seed=2"
JOBS = ["model=attention,train.seed=1", FAILED, "model=gdn_hybrid,train.seed=1", "model=gdn_hybrid,train.seed=2"]


def test_sweep_records_a_failed_job_and_goes_on(cpu_sweep):
    first = cpu_sweep["first"]
    assert first.returncode == 1, first.stderr[-3000:]
    statuses = cpu_sweep["first_statuses"]
    assert sorted(statuses) == JOBS
    assert {k: v["status"] for k, v in statuses.items()} == {j: "failed" if j == FAILED else "ok" for j in JOBS}
    failed = statuses[FAILED]
    assert failed["returncode"] != 0 and "no shards match" in failed["error"] and "attention_s2" in failed["error"]
    assert failed["overrides"] == {"model": "attention", "train.seed": "2"} and failed["tail"]
    failed_line = rf"^sweep_job:{re.escape(FAILED)} status:failed returncode:1 .*FileNotFoundError"
    assert re.search(failed_line, first.stdout, re.M)
    assert len(re.findall(r"^sweep_job:\S+ status:ok ", first.stdout, re.M)) == 2 * 3  # as they end, then the summary
    assert re.search(r"^\[model=gdn_hybrid,train.seed=1\] step:6/6 train_loss:", first.stdout, re.M)  # teed live
    assert sorted(cpu_sweep["finished"]) == sorted(j for j in JOBS if j != FAILED)


def test_resume_skips_finished_jobs_and_reruns_the_failed_one(cpu_sweep):
    second = cpu_sweep["second"]
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    summary = second.stdout.split("sweep_summary:")[1]
    assert {m[0]: m[1] for m in re.findall(r"^sweep_job:(\S+) status:(\S+)", summary, re.M)} == \
        {j: "ok" if j == FAILED else "skipped" for j in JOBS}
    for job, mtime in cpu_sweep["finished"].items():  # untouched
        assert (cpu_sweep["dir"] / job / f"{job}.results.json").stat().st_mtime_ns == mtime
    status = json.loads((cpu_sweep["dir"] / FAILED / "status.json").read_text())
    assert status["status"] == "ok" and status["returncode"] == 0 and "error" not in status


def test_job_dirs_hold_the_resolved_config_and_the_outputs(cpu_sweep):
    for job in JOBS:
        job_dir = cpu_sweep["dir"] / job
        resolved = OmegaConf.load(job_dir / "resolved.yaml")
        assert resolved.run.run_id == job and Path(resolved.run.log_dir) == job_dir
        assert resolved.run.wandb_group == "cpu_test" and resolved.export.enabled
        assert resolved.data.val_files.endswith(f"{resolved.model.preset}_s{resolved.train.seed}/*.bin")
        results = json.loads((job_dir / f"{job}.results.json").read_text())
        stdout = (job_dir / "stdout.txt").read_text()
        assert results["final_line"] in stdout.splitlines()
        assert (job_dir / f"{job}.txt").read_text().strip().splitlines()[-1] == results["final_line"]


def test_report_rows_match_each_jobs_results_and_log(cpu_sweep):
    rows = read_csv(cpu_sweep["dir"] / "report.csv")
    assert sorted(rows) == JOBS
    for job, row in rows.items():
        job_dir = cpu_sweep["dir"] / job
        results = json.loads((job_dir / f"{job}.results.json").read_text())
        log = (job_dir / f"{job}.txt").read_text()
        assert row["status"] == "ok" and row["model_preset"] == results["model_preset"] == job.split(",")[0][6:]
        assert int(row["seed"]) == results["seed"] and row["group"] == results["model_preset"]
        for key in ("params", "steps", "tokens_seen", "bytes_total"):
            assert int(row[key]) == results[key], key
        for key in ("tok_per_s", "train_time_s", "val_bpb", "q_val_bpb"):
            assert float(row[key]) == results[key], key
        last = re.search(r"^final_int6_roundtrip_exact val_loss:\S+ val_bpb:(\S+)$", log, re.M)
        assert f"{float(row['q_val_bpb']):.8f}" == last[1]
        assert float(row["quant_gap_bpb"]) == float(re.search(r"^quant_gap_bpb:(\S+)", log, re.M)[1])
        splits = [json.loads(line) for line in (job_dir / f"{job}.grad_split.jsonl").read_text().splitlines()]
        assert len(splits) == 3  # steps 0, 2, 4
        gdn_share = statistics.fmean(s["type"].get("gdn", 0.0) for s in splits)
        assert float(row["gdn_grad_share"]) == pytest.approx(gdn_share)
        assert (float(row["gdn_grad_share"]) > 0) == ("G" in results["layout"])


def test_report_groups_and_plots(cpu_sweep):
    rows, groups = read_csv(cpu_sweep["dir"] / "report.csv"), read_csv(cpu_sweep["dir"] / "groups.csv")
    assert sorted(groups) == ["attention", "gdn_hybrid"]
    for name, group in groups.items():
        members = [r for r in rows.values() if r["group"] == name]
        assert group["ok"] == "2" and group["seeds"] == "1 2"
        for metric in ("val_bpb", "q_val_bpb", "tok_per_s"):
            values = [float(r[metric]) for r in members]
            assert float(group[f"{metric}_mean"]) == pytest.approx(statistics.fmean(values))
            assert float(group[f"{metric}_std"]) == pytest.approx(statistics.stdev(values))
    report = (cpu_sweep["dir"] / "report.md").read_text()
    assert report.count("| model=") == 4 and "| gdn_hybrid | 2 | 2 | 1 2 |" in report
    for png in ("curves.png", "tok_per_s.png", "grad_split.png"):
        assert (cpu_sweep["dir"] / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report


def test_report_of_the_first_invocation_lists_the_failed_job(cpu_sweep):
    rows = cpu_sweep["first_report"]
    assert sorted(rows) == JOBS and [j for j, r in rows.items() if r["status"] == "failed"] == [FAILED]
    failed = rows[FAILED]
    assert failed["model_preset"] == "attention" and failed["seed"] == "2" and "no shards match" in failed["error"]
    assert failed["val_bpb"] == failed["tok_per_s"] == failed["steps"] == ""
    assert cpu_sweep["first_groups"]["attention"]["ok"] == "1"


def test_wandb_offline_run_holds_the_metrics(cpu_sweep):
    job = "model=gdn_hybrid,train.seed=1"
    files = list((cpu_sweep["dir"] / job / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = wandb_records(files[0])
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_group == "cpu_test" and run.display_name == job and run.project == "gdn-hybrid"
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert sorted({h["_step"] for h in history if "train_loss" in h}) == [1, 2, 3, 4, 5, 6]
    log = (cpu_sweep["dir"] / job / f"{job}.txt").read_text()
    logged = {int(m[1]): m[2] for m in re.finditer(r"^step:(\d+) val_loss:\S+ val_bpb:(\S+)", log, re.M)}
    assert sorted(logged) == [3]
    assert {h["_step"]: f"{h['val_bpb']:.8f}" for h in history if "val_bpb" in h} == logged


# ----------------------------------------------------------------------------------------------------
# Sweeps named by default (no `sweep=`), and what a later invocation may not do to a finished job

@pytest.fixture(scope="module")
def unnamed_sweeps(synthetic_data, tmp_path_factory):
    """One 2-step job without `sweep=` or launch.sweep_dir, then one of the cpu_smoke_sweep preset; the first job is
    then swept again with an invalid config, with its own config (resumed) and with two processes."""
    tmp = tmp_path_factory.mktemp("unnamed")
    base = TINY + synthetic_data["overrides"] + ["train.max_steps=2", "train.seed=3"]
    job_dir = tmp / "sweeps" / "adhoc" / "default"  # no swept key: the job id is `default`
    runs = dict(adhoc=run_sweep(base, tmp))
    runs["preset"] = run_sweep(["experiment=cpu_smoke_sweep", *TINY, *synthetic_data["overrides"], "model=gdn_hybrid",
                                "train.seed=1", "train.max_steps=2"], tmp)
    files = lambda: {p.name: p.read_bytes() for p in job_dir.iterdir() if p.is_file()}
    finished = files()
    for name, extra in [("invalid", ["train.seq_len=0"]), ("resumed", []), ("world_size", ["launch.nproc_per_node=2"])]:
        runs[name] = run_sweep(base + extra, tmp)
        runs[name].files_after = files()
    return dict(dir=tmp / "sweeps", job_dir=job_dir, finished=finished, **runs)


def summary_statuses(proc) -> dict:
    summary = proc.stdout.split("sweep_summary:")[1]
    lines = re.findall(r"^sweep_job:(\S+) status:(\S+)(.*) dir:", summary, re.M)
    return {job: (status, m[1] if (m := re.search(r" error:(.*)", rest)) else None) for job, status, rest in lines}


def test_sweep_without_a_name_runs_in_sweeps_adhoc(unnamed_sweeps):
    proc = unnamed_sweeps["adhoc"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_dir = unnamed_sweeps["job_dir"]
    assert json.loads((job_dir / "status.json").read_text())["status"] == "ok"
    assert OmegaConf.load(job_dir / "resolved.yaml").run.wandb_group == "adhoc"
    assert (job_dir.parent / "report.md").exists()


def test_experiment_preset_names_its_sweep(unnamed_sweeps):
    proc = unnamed_sweeps["preset"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_dir = unnamed_sweeps["dir"] / "cpu_smoke_sweep" / "model=gdn_hybrid,train.seed=1"
    assert json.loads((job_dir / "status.json").read_text())["status"] == "ok"
    resolved = OmegaConf.load(job_dir / "resolved.yaml")
    assert resolved.run.wandb_group == "cpu_smoke_sweep" and resolved.model.model_dim == 64
    assert sorted(p.name for p in unnamed_sweeps["dir"].iterdir()) == ["adhoc", "cpu_smoke_sweep"]


def test_invalid_config_leaves_a_finished_job_as_it_was(unnamed_sweeps):
    proc = unnamed_sweeps["invalid"]
    assert proc.returncode == 1
    assert summary_statuses(proc) == {"default": ("invalid", "config train.seq_len: 0 must be > 0")}
    assert proc.files_after == unnamed_sweeps["finished"]
    resumed = unnamed_sweeps["resumed"]  # so the same sweep still skips it
    assert resumed.returncode == 0 and summary_statuses(resumed) == {"default": ("skipped", None)}
    assert resumed.files_after == unnamed_sweeps["finished"]


def test_another_world_size_is_a_changed_config(unnamed_sweeps):
    proc = unnamed_sweeps["world_size"]
    assert proc.returncode == 1
    status, error = summary_statuses(proc)["default"]
    assert status == "config_changed" and "(world size (launch.nproc_per_node): 1 -> 2): not rerun" in error
    assert proc.files_after == unnamed_sweeps["finished"]


def test_report_of_a_dir_without_job_dirs_is_an_error(tmp_path, capsys):
    import report
    for sweep_name in ("a", "b"):
        (tmp_path / "sweeps" / sweep_name / "model=attention").mkdir(parents=True)
        (tmp_path / "sweeps" / sweep_name / "model=attention" / "status.json").write_text('{"status": "failed"}')
    (tmp_path / "sweeps" / "notes").mkdir()
    assert report.main([str(tmp_path / "sweeps")]) == 2
    assert capsys.readouterr().err == (
        f"report.py: {tmp_path / 'sweeps'} holds no job dirs (subdirectories with a status.json or resolved.yaml): "
        "expected a sweep dir written by sweep.py, e.g. sweeps/<name>; it holds the sweep dirs a, b\n")
    assert report.main([str(tmp_path / "sweeps" / "notes")]) == 2
    assert "notes holds no job dirs" in capsys.readouterr().err
    assert not list(tmp_path.rglob("report.*"))
    assert report.main([str(tmp_path / "sweeps" / "a")]) == 0 and (tmp_path / "sweeps" / "a" / "report.md").exists()

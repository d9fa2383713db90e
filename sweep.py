#!/usr/bin/env python3
"""sweep.py: a grid of train_gpt.py runs with Hydra multirun; every job is a torchrun subprocess.

    python sweep.py -m experiment=gdn_vs_attention                  # the preset's grid (its hydra.sweeper.params)
    python sweep.py -m experiment=gdn_variants data=fineweb_sp8192  # a preset plus shared overrides
    python sweep.py -m model=gdn_hybrid,attention train.seed=1,2 budget=1gpu_2min sweep=my_grid
    python report.py sweeps/gdn_vs_attention                        # rewrite the report of a sweep directory

The primary config is conf/sweep.yaml: the trainer's conf/config.yaml (same groups and defaults) plus
`sweep` (the name; default: run.wandb_group, which an experiment preset sets to its own name, else "adhoc")
and `launch` (LaunchConfig below), checked against a structured schema, so a misspelled key fails at compose
time and the error names it. `sweep`, `experiment`, `run.wandb_group` and `launch.*` take one value per sweep:
sweeping one (`launch.nproc_per_node=1,8`) is an error; a list is written in brackets
(`launch.cuda_visible_devices=[0,1]`).

Hydra enumerates the jobs; this process never trains. For each job it writes
    <launch.sweep_dir>/<job_id>/resolved.yaml   the trainer's part of the config, resolved; run.log_dir is the job
                                                dir, run.run_id the job id, run.wandb_group the sweep name
and runs `python -m torch.distributed.run --standalone --nproc_per_node=N train_gpt.py --config resolved.yaml`
with its output teed to stdout.txt and its outcome in status.json. The job id is Hydra's override-dirname
of the swept keys only (e.g. `model=attention,train.seed=1`), so it is the same on every invocation.

Parallelism: Hydra's basic launcher calls the job function one job at a time; the job function hands the
job to a pool of device slots (launch.gpus_per_job GPUs each, CUDA_VISIBLE_DEVICES set to the slot) and
returns, so up to launch.parallel_jobs jobs run side by side (default: one per slot, so eight 1-GPU jobs
on an 8-GPU host; without GPUs, launch.parallel_jobs CPU jobs, default 1). The process then waits for all
jobs, prints one summary line per job, writes the report (report.py) and exits 1 if any job did not succeed.

A sweep directory:
    <sweep_dir>/multirun.yaml                    Hydra's record of the last invocation
    <sweep_dir>/report.md, report.csv, groups.csv, curves.png, tok_per_s.png, grad_split.png
    <sweep_dir>/<job_id>/resolved.yaml           what the job ran (train_gpt.py --config)
                         status.json             ok | failed | timeout | invalid | running, returncode, error, tail
                         stdout.txt              the job's console output (stdout and stderr)
                         <job_id>.txt, .results.json, .grad_split.jsonl, .int6.ptz   the trainer's outputs
                         wandb/                  with run.wandb_mode=offline|online

Resume: with launch.skip_existing (default), a job whose status.json says ok and whose results.json
exists is skipped; failed, timed-out or interrupted jobs are run again from scratch (their old outputs are
deleted). A finished job whose model/data/train/eval/export config or world size (results.json's world_size
against launch.nproc_per_node: under a wallclock budget it changes the step count) differs from the new one is
not rerun and not overwritten: it is reported as config_changed (use another sweep name, or
launch.skip_existing=false). An invalid config is reported as invalid; it overwrites the status of a job that
did not finish ok, never that of one that did.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import hydra

import report  # no heavy imports at module level (matplotlib only inside its plot functions)
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import train_gpt as tg

TRAINER = Path(__file__).resolve().parent / "train_gpt.py"
TRAINER_SECTIONS = [f.name for f in dataclasses.fields(tg.Config)]
RESULT_SECTIONS = ("model", "data", "train", "eval", "export")  # what decides a job's numbers (run.* does not)
SAFE_ID = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclass
class LaunchConfig:
    sweep_dir: str = "sweeps/${sweep}"   # job directories, the report and Hydra's multirun.yaml
    nproc_per_node: int = 1              # torchrun processes per job
    gpus_per_job: int = 0                # 0: nproc_per_node (ignored without GPUs)
    cuda_visible_devices: Any = field(default_factory=list)  # GPUs the sweep may use, e.g. [0,1,2,3] or 3;
                                                             # empty: $CUDA_VISIBLE_DEVICES or all
    parallel_jobs: int = 0               # jobs at once; 0: one per GPU slot (1 without GPUs)
    skip_existing: bool = True           # resume: skip jobs that finished ok
    torchrun_args: List[str] = field(default_factory=list)  # extra torch.distributed.run arguments
    timeout_s: float = 0.0               # 0: none; a job running longer is stopped and recorded as timeout
    env: Dict[str, str] = field(default_factory=dict)       # extra environment variables for the jobs
    echo: bool = True                    # echo job output to the console, each line prefixed with the job id
    report: bool = True                  # write report.md/csv and plots into the sweep dir at the end


@dataclass
class SweepSchema(tg.Config):
    # An experiment preset sets run.wandb_group to its own name; the trainer's default is empty
    run: tg.RunConfig = field(default_factory=lambda: tg.RunConfig(wandb_group="adhoc"))
    sweep: str = "${run.wandb_group}"  # the sweep's name: its dir and every job's run.wandb_group
    launch: LaunchConfig = field(default_factory=LaunchConfig)


def command_line_sweep_keys() -> set[str]:
    """Keys swept on the command line (`model=a,b`): a job's config only holds its own value."""
    from hydra._internal.utils import get_args_parser
    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    return {o.get_key_element() for o in OverridesParser.create().parse_overrides(args.overrides)
            if o.is_sweep_override()}


ONE_PER_SWEEP = ("sweep", "experiment", "run.wandb_group", "launch")  # the sweep's name, preset and launcher


def check_swept_keys(keys: set[str]) -> None:
    """Swept, a `launch.*` key would run the same grid once per value into the same job dirs, and a name (or the
    preset that sets it) would scatter the jobs over several sweep dirs."""
    bare = lambda key: key.lstrip("+~").split("@")[0]
    bad = sorted(k for k in keys if bare(k) in ONE_PER_SWEEP or bare(k).startswith("launch."))
    if bad:
        raise ValueError(f"cannot sweep {', '.join(bad)}: sweep, experiment, run.wandb_group and launch.* take one "
                         "value per sweep (run one sweep per value; a list is written in brackets, e.g. "
                         "launch.cuda_visible_devices=[0,1])")


def swept_overrides() -> dict[str, str]:
    """This job's values of the swept keys (preset sweeper params and command-line sweeps), sorted by key."""
    hc = HydraConfig.get()
    swept = set(hc.sweeper.get("params") or {}) | command_line_sweep_keys()
    check_swept_keys(swept)
    parsed = OverridesParser.create().parse_overrides(list(hc.overrides.task))
    return dict(sorted((o.get_key_element(), o.get_value_element_as_str()) for o in parsed
                       if o.get_key_element() in swept))


def job_id_from(overrides: dict[str, str]) -> str:
    """Hydra-style override dirname (`model=attention,train.seed=1`), safe as a file name."""
    raw = ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"
    safe = SAFE_ID.sub("_", raw)
    if safe != raw or len(safe) > 120:  # keep distinct values distinct after sanitising or shortening
        safe = f"{safe[:110]}-{hashlib.sha256(raw.encode()).hexdigest()[:8]}"
    return safe


def register() -> None:
    """conf/config.yaml, which sweep.yaml extends, names its schema `schema`; train_gpt.load_config stores the
    trainer's Config under that name, so a process that composes both registers again before composing sweep.yaml."""
    ConfigStore.instance().store(name="schema", node=SweepSchema)
    OmegaConf.register_new_resolver("sweep_job_id", lambda: job_id_from(swept_overrides()), replace=True)


register()


# ----------------------------------------------------------------------------------------------------
# One job: its directory, its resolved config, the torchrun subprocess, its status.json

@dataclass
class Job:
    job_id: str
    dir: Path
    overrides: dict       # the swept keys' values
    launch: LaunchConfig
    config: dict | None = None  # the trainer's resolved config


def say(msg: str, _lock=threading.Lock()) -> None:
    with _lock:  # jobs finish in several threads
        print(msg, flush=True)


def check_known_keys(cfg: DictConfig) -> None:
    """`+key=value` adds a key even to a structured config; the trainer's sections are checked by train_gpt."""
    for node, schema, where in ((cfg, SweepSchema, ""), (cfg.launch, LaunchConfig, "launch.")):
        valid = sorted(f.name for f in dataclasses.fields(schema))
        unknown = sorted(set(node) - set(valid))
        if unknown:
            raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                             f"valid keys under '{where or 'root'}': {', '.join(valid)}")


def trainer_config(cfg: DictConfig, job: Job) -> dict:
    check_known_keys(cfg)
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in TRAINER_SECTIONS}
    config["run"].update(log_dir=str(job.dir), run_id=job.job_id, wandb_group=cfg.sweep)
    tg.validate_config(tg.config_from_dict(tg.Config, config))  # the trainer's own checks, before launching
    return config


def finished_ok(job: Job) -> bool:
    status = report.read_json(job.dir / "status.json") or {}
    return status.get("status") == "ok" and report.read_json(job.dir / f"{job.job_id}.results.json") is not None


def flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def changed_keys(job: Job) -> list[str]:
    """What decides the numbers and differs from the finished job, as `key: old -> new`: the result sections of its
    resolved.yaml, and the world size it ran with (results.json), which sets the step count under a wallclock budget."""
    old = flat({k: v for k, v in OmegaConf.to_container(OmegaConf.load(job.dir / "resolved.yaml")).items()
                if k in RESULT_SECTIONS})
    new = flat({k: job.config[k] for k in RESULT_SECTIONS})
    changed = [f"{k}: {old.get(k)} -> {new.get(k)}" for k in sorted(old.keys() | new.keys())
               if old.get(k) != new.get(k)]
    world_size = report.read_json(job.dir / f"{job.job_id}.results.json").get("world_size")
    if world_size != job.launch.nproc_per_node:
        changed.append(f"world size (launch.nproc_per_node): {world_size} -> {job.launch.nproc_per_node}")
    return changed


def clear_outputs(job: Job) -> None:
    """A rerun starts clean: the trainer appends to its log and grad-split files."""
    for path in [*job.dir.glob(f"{job.job_id}.*"), job.dir / "stdout.txt", job.dir / "status.json"]:
        path.unlink(missing_ok=True)
    shutil.rmtree(job.dir / "wandb", ignore_errors=True)


def write_status(job: Job, **fields) -> dict:
    status = dict(job_id=job.job_id, overrides=job.overrides, **fields)
    tmp = job.dir / "status.json.tmp"
    tmp.write_text(json.dumps(status, indent=1) + "\n")
    os.replace(tmp, job.dir / "status.json")  # the report may read it while the job runs
    return status


def job_command(job: Job) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={job.launch.nproc_per_node}", *job.launch.torchrun_args,
            str(TRAINER), "--config", str(job.dir / "resolved.yaml")]


def job_env(job: Job, gpus: list[str] | None) -> dict:
    env = {"WANDB_SILENT": "true", **os.environ, "PYTHONUNBUFFERED": "1", **job.launch.env}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    else:  # train_gpt.py gives a CPU job every core: side-by-side jobs oversubscribe, and spinning OpenMP
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # threads then make each step ~10x slower
    return env


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM first: torchrun then stops its workers; SIGKILL if it does not exit."""
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()


def error_line(tail: list[str]) -> str:
    """The worker's exception line (`[rank0]: ` prefixed with several ranks); torchrun's closing
    ChildFailedError only points at it."""
    errors = [line.strip() for line in tail if re.match(r"(\[rank\d+\]:\s*)?[\w.]*(Error|Exception)\b", line)
              and "ChildFailedError" not in line]
    return errors[-1] if errors else (tail[-1].strip() if tail else "")


def tee(proc: subprocess.Popen, job: Job, out, tail: collections.deque) -> None:
    for line in proc.stdout:
        out.write(line)
        out.flush()
        tail.append(line.rstrip("\n"))
        if job.launch.echo:
            say(f"[{job.job_id}] {line.rstrip()}")


def run_job(job: Job, gpus: list[str] | None) -> dict:
    """Run one job to completion with its output teed to stdout.txt; returns (and writes) its status."""
    clear_outputs(job)
    cmd, started = job_command(job), time.time()
    common = dict(command=cmd, cuda_visible_devices=None if gpus is None else ",".join(gpus),
                  started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_status(job, status="running", **common)
    tail, timed_out = collections.deque(maxlen=60), threading.Event()
    with open(job.dir / "stdout.txt", "w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                                errors="replace", env=job_env(job, gpus))

        def on_timeout():
            timed_out.set()
            stop(proc)

        timer = threading.Timer(job.launch.timeout_s, on_timeout) if job.launch.timeout_s > 0 else None
        if timer:
            timer.start()
        tee(proc, job, out, tail)
        returncode = proc.wait()
        if timer:
            timer.cancel()
    has_results = (job.dir / f"{job.job_id}.results.json").exists()
    status = "timeout" if timed_out.is_set() else "ok" if returncode == 0 and has_results else "failed"
    failure = {} if status == "ok" else dict(error=error_line(list(tail)), tail=[line[:500] for line in tail][-30:])
    return write_status(job, status=status, returncode=returncode, duration_s=round(time.time() - started, 1),
                        **failure, **common)


# ----------------------------------------------------------------------------------------------------
# Device slots, and the pool that runs jobs in the background

def host_gpus(launch: LaunchConfig) -> list[str]:
    if launch.cuda_visible_devices:
        given = launch.cuda_visible_devices
        gpus = [str(g) for g in (given if isinstance(given, (list, tuple)) else [given])]  # one GPU may be a bare id
        if len(set(gpus)) != len(gpus):
            raise ValueError(f"launch.cuda_visible_devices={gpus} lists a GPU twice")
        return gpus
    import torch
    if not torch.cuda.is_available():
        return []
    visible = [d.strip() for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    return visible or [str(i) for i in range(torch.cuda.device_count())]


def device_slots(launch: LaunchConfig) -> list[list[str] | None]:
    """GPU groups of gpus_per_job each; without GPUs, parallel_jobs CPU slots (None: no CUDA_VISIBLE_DEVICES)."""
    gpus = host_gpus(launch)
    if not gpus:
        return [None] * max(1, launch.parallel_jobs)
    per_job = launch.gpus_per_job or launch.nproc_per_node
    if per_job > len(gpus):
        raise ValueError(f"launch.gpus_per_job={per_job} but only GPUs {','.join(gpus)} are available")
    slots = [gpus[i:i + per_job] for i in range(0, len(gpus) - per_job + 1, per_job)]
    return slots[:launch.parallel_jobs] if launch.parallel_jobs > 0 else slots


class JobPool:
    """Each job runs in a thread while it holds a device slot; submit() blocks until a slot is free."""

    def __init__(self, slots: list):
        self.free, self.threads, self.outcomes = queue.Queue(), [], {}
        for slot in slots:
            self.free.put(slot)

    def submit(self, job: Job) -> None:
        slot = self.free.get()
        thread = threading.Thread(target=self._run, args=(job, slot), name=job.job_id)
        self.threads.append(thread)
        thread.start()

    def _run(self, job: Job, slot) -> None:
        try:
            outcome = run_job(job, slot)
        except Exception as e:  # e.g. an unwritable job dir: record it, keep the other jobs going
            outcome = write_status(job, status="failed", returncode=None, error=f"{type(e).__name__}: {e}")
        finally:
            self.free.put(slot)
        self.outcomes[job.job_id] = outcome
        say(summary_line(job, outcome))

    def wait(self) -> dict:
        for thread in self.threads:
            thread.join()
        return self.outcomes


def summary_line(job: Job, outcome: dict) -> str:
    parts = [f"sweep_job:{job.job_id}", f"status:{outcome['status']}"]
    parts += [f"{k}:{outcome[k]}" for k in ("returncode", "duration_s") if outcome.get(k) is not None]
    results = report.read_json(job.dir / f"{job.job_id}.results.json") if outcome["status"] in ("ok", "skipped") else None
    if results:
        parts += [f"val_bpb:{results['val_bpb']:.8f}", f"steps:{results['steps']}", f"tok/s:{results['tok_per_s']:.0f}"]
        if results.get("q_val_bpb") is not None:
            parts.append(f"q_val_bpb:{results['q_val_bpb']:.8f}")
    if outcome.get("error"):
        parts.append(f"error:{outcome['error']}")
    return " ".join(parts + [f"dir:{job.dir}"])


# ----------------------------------------------------------------------------------------------------
# The Hydra job function, and the end of the multirun

@dataclass
class SweepState:
    """What the job function leaves for the end of the multirun: Hydra keeps nothing between jobs."""
    jobs: list = field(default_factory=list)        # Job, in Hydra's order
    outcomes: dict = field(default_factory=dict)    # job_id -> its status (as in status.json)
    pool: JobPool | None = None
    report: bool = True


STATE = SweepState()


def settle(cfg: DictConfig, job: Job) -> dict | None:
    """The outcome of a job that does not need to run (invalid config, finished before), else None."""
    try:
        job.config = trainer_config(cfg, job)
    except ValueError as e:
        if finished_ok(job):  # the new config is what is wrong: the finished job's record stays as it is
            return dict(status="invalid", error=str(e))
        return write_status(job, status="invalid", error=str(e))
    if job.launch.skip_existing and finished_ok(job):
        changed = changed_keys(job)
        if changed:  # keep the finished job's files: they are the results of another config
            return dict(status="config_changed", error=f"finished before with another config ({'; '.join(changed)}): "
                        "not rerun; use another sweep name or launch.skip_existing=false")
        return dict(status="skipped")
    return None


@hydra.main(config_path="conf", config_name="sweep", version_base="1.3")
def main(cfg: DictConfig) -> None:
    job_dir = Path(HydraConfig.get().runtime.output_dir)  # <sweep_dir>/<job id>: hydra.sweep.subdir
    job = Job(job_dir.name, job_dir, swept_overrides(), OmegaConf.to_object(cfg.launch))
    if STATE.pool is None:  # the first job: slots that cannot be made stop the sweep before anything runs
        STATE.pool = JobPool(device_slots(job.launch))
    STATE.jobs.append(job)
    STATE.report = job.launch.report
    outcome = settle(cfg, job)
    if outcome is not None:
        STATE.outcomes[job.job_id] = outcome
        say(summary_line(job, outcome))
        return
    OmegaConf.save(OmegaConf.create(job.config), job.dir / "resolved.yaml")
    STATE.pool.submit(job)


def finish() -> int:
    """Wait for the running jobs, print one line per job, write the report; 1 if any job did not succeed."""
    if STATE.pool is not None:
        STATE.outcomes.update(STATE.pool.wait())
    if not STATE.jobs:
        return 0
    sweep_dir = STATE.jobs[0].dir.parent
    say(f"sweep_summary: {len(STATE.jobs)} jobs in {sweep_dir}")
    for job in STATE.jobs:
        say(summary_line(job, STATE.outcomes[job.job_id]))
    if STATE.report:
        say("sweep_report: " + " ".join(str(p) for p in report.write_report(sweep_dir)))
    return 0 if all(STATE.outcomes[j.job_id]["status"] in ("ok", "skipped") for j in STATE.jobs) else 1


if __name__ == "__main__":
    try:  # before Hydra composes a job with one value of such a key
        check_swept_keys(command_line_sweep_keys())
    except ValueError as e:
        sys.exit(f"sweep.py: {e}")
    main()
    sys.exit(finish())

#!/usr/bin/env python3
"""Record folders for the 16 MB / 10 minute challenge: write, validate, rank, compare.

A record folder is records/<track>/<YYYY-MM-DD>_<name>/ and holds
    README.md             what was run, per-seed table, mean and std
    submission.json       the challenge's fields plus per-seed results
    train_gpt.py          the exact script that ran (its sha256 matched every run's code_sha256)
    train_seed<seed>.log  each run's log, verbatim; its last line is the score line
    config.yaml           the first seed's resolved config (all seeds share it apart from
                          train.seed and the run.* section: ids, log paths, tracking)
    results/seed<seed>.json  each run's results.json, verbatim

Usage:
    python records.py write --track track_local --name gdn_hybrid_3seed \\
        --results logs/a.results.json logs/b.results.json logs/c.results.json
    python records.py rerun records/track_local/RECORD --seed 2     # prints the command for a new seed
    python records.py add records/track_local/RECORD --results logs/c.results.json --command "..."
    python records.py validate records
    python records.py leaderboard --records-dir records
    python records.py compare records/track_local/NEW records/track_local/OLD --margin 0.005

The score of a run is its round-trip (post-quantization) val_loss/val_bpb when it exported a
quantized model, else its pre-quantization values; it is what the log's last line reports.
The 16,000,000-byte artifact limit is checked for every track, track_local included: it is
the challenge's rule, and a local record over it could never become a submission. The two
16mb tracks also need every run to have exported a quantized model (round-trip score and
artifact sha256), and track_10min_16mb needs 8xH100 SXM (not PCIe or NVL), FineWeb data and at
most 600 s each of training (training_clock_s: calibration on training data included) and
evaluation. A run whose config enabled export but that has no round-trip score (its export
crashed) is refused on every track.
Exit status: 0 success; 1 validation problems (validate, or write's check of what it wrote);
2 refusal or unreadable input (one clear message on stderr).

Only the standard library and PyYAML are imported (no torch, no scipy), so sweep tools and
run.sh can use this module anywhere.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import re
import shlex
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

TRACKS = ("track_10min_16mb", "track_non_record_16mb", "track_local")
ARTIFACT_LIMIT_BYTES = 16_000_000  # decimal bytes: code + compressed model
# Config that legitimately differs between the seeds of a record: the seed, and the run.*
# section (run_id, log_dir, wandb_*: ids, paths and tracking, none of which changes the numbers;
# sweep.py gives every job its own run.log_dir and run.run_id).
PER_RUN_CONFIG_SECTION = "run"
PER_RUN_CONFIG_KEYS = frozenset({"train.seed"})
# track_10min_16mb: the challenge's hardware, data and time budget (REFERENCE.md section 1).
TIMED_TRACK = "track_10min_16mb"
SIZED_TRACKS = ("track_10min_16mb", "track_non_record_16mb")  # need a quantized artifact
TIMED_TRACK_WORLD_SIZE = 8
# results.json: f"{world}x{device name}". The SXM H100 reports "NVIDIA H100 80GB HBM3" (or "NVIDIA H100 SXM5 80GB");
# the PCIe and NVL cards ("NVIDIA H100 PCIe", "NVIDIA H100 NVL") are other hardware, not the challenge's.
TIMED_TRACK_HARDWARE_RE = re.compile(r"^8x.*\bH100\b")
TIMED_TRACK_NOT_SXM_RE = re.compile(r"PCIe|NVL", re.IGNORECASE)
TIMED_TRACK_DATA_NAMES = ("fineweb10B_sp1024", "fineweb10B_sp8192")  # conf/data/fineweb_*.yaml
TIMED_TRACK_LIMIT_S = 600.0  # each of training and evaluation
# results.json fields outside the config that must also agree between the seeds of a record.
SHARED_RESULT_FIELDS = ("model_preset", "layout", "data_name", "world_size")
FINAL_LINE_RE = re.compile(r"^final_\w+ val_loss:(?P<val_loss>\S+) val_bpb:(?P<val_bpb>\S+)")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Means and stds are stored rounded to the logs' 8 decimals; agreement allows that rounding.
SUMMARY_TOLERANCE = 1e-8

# JSON type names used in schema messages; "number" also accepts integers.
NUMBER, INTEGER, STRING = "number", "integer", "string"
ARRAY, OBJECT, NULL = "array", "object", "null"
SUBMISSION_SCHEMA = {
    "author": (STRING,), "github_id": (STRING,), "name": (STRING,), "blurb": (STRING,),
    "date": (STRING,), "val_loss": (NUMBER,), "val_bpb": (NUMBER,),
    "bytes_total": (INTEGER,), "bytes_code": (INTEGER,),
    "track": (STRING,), "val_bpb_std": (NUMBER,), "seeds": (ARRAY,), "seed_results": (OBJECT,),
    "hardware": (STRING,), "pytorch_version": (STRING, NULL), "versions": (OBJECT,),
    "model_preset": (STRING,), "layout": (STRING, NULL), "data_name": (STRING,),
    "world_size": (INTEGER,),
}
# The results.json fields a record is built from (params and quant_name are optional extras).
RESULTS_SCHEMA = {
    "run_id": (STRING,), "date": (STRING,), "seed": (INTEGER,), "code_sha256": (STRING,),
    "config": (OBJECT,), "final_line": (STRING,), "log_path": (STRING,),
    "val_loss": (NUMBER,), "val_bpb": (NUMBER,), "q_val_loss": (NUMBER, NULL),
    "q_val_bpb": (NUMBER, NULL), "bytes_code": (INTEGER,), "bytes_total": (INTEGER,),
    "steps": (INTEGER,), "step_avg_ms": (NUMBER,), "tok_per_s": (NUMBER,),
    "train_time_s": (NUMBER,), "eval_time_s": (NUMBER, NULL), "artifact_sha256": (STRING, NULL),
    "hardware": (STRING,), "versions": (OBJECT,), "model_preset": (STRING,),
    "layout": (STRING, NULL), "data_name": (STRING,), "world_size": (INTEGER,),
}
SEED_RESULT_SCHEMA = {
    "val_loss": (NUMBER,), "val_bpb": (NUMBER,), "pre_quant_val_bpb": (NUMBER,),
    "artifact_bytes": (INTEGER,), "steps": (INTEGER,), "step_avg_ms": (NUMBER,),
    "tok_per_s": (NUMBER,), "eval_time_s": (NUMBER, NULL), "artifact_sha256": (STRING, NULL),
}


class RecordError(Exception):
    """A refusal or an unreadable input; its message is shown to the user as is."""


# ---------------------------------------------------------------------------------------------
# small shared helpers


def json_type(value: Any) -> str:
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return INTEGER
    if isinstance(value, float):
        return NUMBER
    if isinstance(value, str):
        return STRING
    if isinstance(value, list):
        return ARRAY
    if isinstance(value, dict):
        return OBJECT
    return type(value).__name__


def type_problem(where: str, value: Any, allowed: tuple[str, ...]) -> str | None:
    actual = json_type(value)
    accepted = set(allowed) | ({INTEGER} if NUMBER in allowed else set())
    if actual not in accepted:
        return f"{where}: expected {' or '.join(allowed)}, got {actual} ({value!r:.40})"
    if actual == NUMBER and not math.isfinite(value):
        return f"{where}: expected a finite number, got {value}"
    return None


def schema_problems(where: str, obj: dict, schema: dict[str, tuple[str, ...]]) -> list[str]:
    """One message per field of schema that obj lacks or holds with the wrong JSON type."""
    problems = []
    for field, allowed in schema.items():
        if field not in obj:
            expected = " or ".join(allowed)
            problems.append(f"{where}: field '{field}' is missing (expected {expected})")
        elif (problem := type_problem(f"{where}: field '{field}'", obj[field], allowed)):
            problems.append(problem)
    return problems


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_json(path: Path) -> Any:
    """Parse a JSON file, turning a missing or malformed file into a RecordError."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(f"{path} is not valid JSON ({e})") from None


def last_line(path: Path) -> str:
    """The last non-blank line of a text file ("" if there is none)."""
    lines = Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    non_blank = [line.rstrip() for line in lines if line.strip()]
    return non_blank[-1] if non_blank else ""


def parse_final_line(line: str) -> tuple[str, str] | None:
    """(val_loss, val_bpb) as printed in a `final_..._exact` score line, or None."""
    match = FINAL_LINE_RE.match(line)
    return (match["val_loss"], match["val_bpb"]) if match else None


def is_iso_date(text: str) -> bool:
    # fromisoformat alone also takes "20261122" and week dates; folder names need YYYY-MM-DD.
    try:
        datetime.date.fromisoformat(text)
    except ValueError:
        return False
    return bool(DATE_RE.match(text))


def fmt8(value: float) -> str:
    return f"{value:.8f}"


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0.0 for a single value)."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std


def flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf}, so that differing config keys can be named."""
    flat = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


# ---------------------------------------------------------------------------------------------
# write


@dataclass
class Run:
    """One training run: its results.json, its log, and the score its log's last line reports."""

    results_path: Path
    results: dict
    log_path: Path
    val_loss: float
    val_bpb: float

    @property
    def seed(self) -> int:
        return self.results["seed"]


def resolve_log_path(results_path: Path, results: dict) -> Path:
    """Find the run's log: log_path may be absolute, relative to the working directory the run
    had, or the log may simply sit next to its results.json (logs/<run_id>.txt)."""
    recorded = Path(results["log_path"])
    candidates = [recorded] if recorded.is_absolute() else [
        recorded,
        results_path.parent / recorded,
        results_path.parent / recorded.name,
    ]
    candidates.append(results_path.parent / f"{results['run_id']}.txt")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RecordError(f"{results_path}: log {results['log_path']} not found "
                      f"(looked at {', '.join(str(c) for c in candidates)})")


def run_score(results: dict) -> tuple[float, float]:
    """The run's score: the round-trip values when a quantized model was exported."""
    if results.get("q_val_bpb") is not None:
        return results["q_val_loss"], results["q_val_bpb"]
    return results["val_loss"], results["val_bpb"]


def run_problems(where: str, results: dict, track: str) -> list[str]:
    """Rules a schema-clean results.json must meet to be part of a record of track."""
    problems = []
    has_q_loss, has_q_bpb = results["q_val_loss"] is not None, results["q_val_bpb"] is not None
    if has_q_loss != has_q_bpb:
        present, null = ("q_val_loss", "q_val_bpb") if has_q_loss else ("q_val_bpb", "q_val_loss")
        problems.append(f"{where}: field '{present}' is set but '{null}' is null: a round-trip "
                        "score needs both (a run without export has neither)")
    export = results["config"].get("export")
    if not isinstance(export, dict) or "enabled" not in export:
        problems.append(f"{where}: config.export.enabled is missing (expected true or false)")
    elif (problem := type_problem(f"{where}: config.export.enabled", export["enabled"],
                                  ("boolean",))):
        problems.append(problem)
    elif export["enabled"] and not (has_q_loss or has_q_bpb):
        problems.append(f"{where}: config.export.enabled is true but q_val_loss and q_val_bpb are "
                        "null: the export did not finish, so the run has no round-trip score")
    if track in SIZED_TRACKS:
        null = [f for f in ("q_val_loss", "q_val_bpb", "artifact_sha256") if results[f] is None]
        if null:
            verb = "is" if len(null) == 1 else "are"
            problems.append(f"{where}: {', '.join(null)} {verb} null: {track} needs a quantized "
                            "artifact (round-trip score and sha256); without one bytes_total is "
                            "only the code and the 16,000,000-byte limit means nothing (use "
                            "track_local)")
    if track == TIMED_TRACK:
        problems += timed_track_problems(where, results)
    return problems


def timed_track_problems(where: str, results: dict) -> list[str]:
    """track_10min_16mb: 8xH100 SXM, FineWeb data, <= 600 s of training and <= 600 s of eval."""
    elsewhere = "use track_non_record_16mb or track_local"
    problems = []
    if results["world_size"] != TIMED_TRACK_WORLD_SIZE:
        problems.append(f"{where}: world_size is {results['world_size']}; {TIMED_TRACK} requires "
                        f"{TIMED_TRACK_WORLD_SIZE} GPUs (8xH100): {elsewhere}")
    hardware = results["hardware"]
    if not TIMED_TRACK_HARDWARE_RE.match(hardware) or TIMED_TRACK_NOT_SXM_RE.search(hardware):
        problems.append(f"{where}: hardware is {hardware!r}; {TIMED_TRACK} requires 8 H100 SXM GPUs "
                        f"('8x<H100 device name>', not a PCIe or NVL card): {elsewhere}")
    if results["data_name"] not in TIMED_TRACK_DATA_NAMES:
        problems.append(f"{where}: data_name is {results['data_name']!r}; {TIMED_TRACK} requires "
                        f"FineWeb data ({' or '.join(TIMED_TRACK_DATA_NAMES)}): use track_local")
    if results["train_time_s"] > TIMED_TRACK_LIMIT_S:
        problems.append(f"{where}: train_time_s is {results['train_time_s']:.1f}; {TIMED_TRACK} "
                        f"requires at most {TIMED_TRACK_LIMIT_S:.0f} s of training: {elsewhere}")
    clock = results.get("training_clock_s")  # training plus calibration on train data, which the rules count as training
    if type_problem("", clock, (NUMBER,)) or clock > TIMED_TRACK_LIMIT_S:
        problems.append(f"{where}: training_clock_s is {clock!r}; {TIMED_TRACK} requires the training clock "
                        f"(training plus calibration that reads training data) recorded and at most "
                        f"{TIMED_TRACK_LIMIT_S:.0f} s: {elsewhere}")
    eval_time = results["eval_time_s"]
    if eval_time is None or eval_time > TIMED_TRACK_LIMIT_S:
        shown = "null" if eval_time is None else f"{eval_time:.1f}"
        problems.append(f"{where}: eval_time_s is {shown}; {TIMED_TRACK} requires a recorded "
                        f"evaluation time of at most {TIMED_TRACK_LIMIT_S:.0f} s: {elsewhere}")
    return problems


def load_run(results_path: Path, track: str, log_path: Path | None = None) -> Run:
    """A run from its results.json; its log is found as resolve_log_path says unless log_path is given."""
    results_path = Path(results_path)
    results = read_json(results_path)
    if not isinstance(results, dict):
        raise RecordError(f"{results_path}: expected a JSON object, got {json_type(results)}")
    problems = (schema_problems(str(results_path), results, RESULTS_SCHEMA)
                or run_problems(str(results_path), results, track))
    if problems:
        raise RecordError("; ".join(problems))
    if not is_iso_date(results["date"]):
        raise RecordError(f"{results_path}: date {results['date']!r} is not YYYY-MM-DD")
    log_path = log_path or resolve_log_path(results_path, results)
    final_line = results["final_line"].rstrip()
    if last_line(log_path) != final_line:
        raise RecordError(f"{results_path}: the last line of {log_path} is not the results' "
                          f"final_line {final_line!r}: wrong or truncated log")
    printed = parse_final_line(final_line)
    if printed is None:
        raise RecordError(f"{results_path}: final_line {final_line!r} is not a "
                          "'final_<name>_exact val_loss:<x> val_bpb:<y>' score line")
    expected = tuple(fmt8(v) for v in run_score(results))
    if printed != expected:
        raise RecordError(f"{results_path}: final_line reports val_loss/val_bpb {printed} "
                          f"but the results hold {expected}")
    return Run(results_path, results, log_path, float(printed[0]), float(printed[1]))


def check_runs_agree(runs: Sequence[Run], script: Path) -> None:
    """Refuse runs that do not form one record: same script, same config, distinct seeds."""
    script_sha = sha256_of(script)
    mismatched = [str(r.results_path) for r in runs if r.results["code_sha256"] != script_sha]
    if mismatched:
        raise RecordError(f"{script} (sha256 {script_sha}) is not the script that ran "
                          f"{', '.join(mismatched)}: the record must hold the exact train_gpt.py "
                          "of its runs (pass it with --script)")
    script_bytes = script.stat().st_size
    wrong_size = [str(r.results_path) for r in runs if r.results["bytes_code"] != script_bytes]
    if wrong_size:
        raise RecordError(f"bytes_code in {', '.join(wrong_size)} differs from the "
                          f"{script_bytes} bytes of {script}")
    seeds = [r.seed for r in runs]
    if len(set(seeds)) != len(seeds):
        raise RecordError(f"duplicate seeds among the runs: {seeds}")
    differing = differing_keys(runs)
    if differing:
        raise RecordError(f"the runs differ in more than the seed (train.seed and run.* may "
                          f"differ): {', '.join(differing)}")


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys (dotted) and shared results fields whose values are not the same in all runs;
    train.seed and the run.* section are left out."""

    def comparable(run: Run) -> dict[str, Any]:
        flat = {f"config.{k}": v for k, v in flatten(run.results["config"]).items()
                if k not in PER_RUN_CONFIG_KEYS
                and k.split(".", 1)[0] != PER_RUN_CONFIG_SECTION}
        flat.update({k: run.results[k] for k in SHARED_RESULT_FIELDS})
        return flat

    views = [comparable(run) for run in runs]
    keys = sorted(set().union(*views))
    missing = object()
    return [k for k in keys if len({json.dumps(v.get(k, missing), sort_keys=True, default=repr)
                                    for v in views}) > 1]


def seed_result(run: Run) -> dict:
    r = run.results
    return {
        "val_loss": run.val_loss,
        "val_bpb": run.val_bpb,
        "pre_quant_val_bpb": r["val_bpb"],
        "artifact_bytes": r["bytes_total"],
        "steps": r["steps"],
        "step_avg_ms": r["step_avg_ms"],
        "tok_per_s": r["tok_per_s"],
        "eval_time_s": r["eval_time_s"],
        "artifact_sha256": r["artifact_sha256"],
    }


def joined_unique(values: Iterable[str]) -> str:
    return ", ".join(dict.fromkeys(values))


def build_submission(runs: Sequence[Run], track: str, name: str, author: str, github_id: str,
                     blurb: str, date: str) -> dict:
    first = runs[0].results
    val_loss, _ = mean_and_std([r.val_loss for r in runs])
    val_bpb, val_bpb_std = mean_and_std([r.val_bpb for r in runs])
    return {
        "author": author,
        "github_id": github_id,
        "name": name,
        "blurb": blurb,
        "date": date,
        "val_loss": round(val_loss, 8),
        "val_bpb": round(val_bpb, 8),
        "bytes_total": max(r.results["bytes_total"] for r in runs),
        "bytes_code": first["bytes_code"],
        "track": track,
        "val_bpb_std": round(val_bpb_std, 8),
        "seeds": [r.seed for r in runs],
        "seed_results": {str(r.seed): seed_result(r) for r in runs},
        "hardware": joined_unique(r.results["hardware"] for r in runs),
        "pytorch_version": first["versions"].get("torch"),
        "versions": first["versions"],
        "model_preset": first["model_preset"],
        "layout": first["layout"],
        "data_name": first["data_name"],
        "world_size": first["world_size"],
    }


def _cell(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _mean_std_cells(columns: Sequence[tuple[list, str]]) -> tuple[list[str], list[str]]:
    """Mean and std cells per column, "n/a" where a column has missing values."""
    means, stds = [], []
    for values, spec in columns:
        if any(v is None for v in values):
            means.append("n/a")
            stds.append("n/a")
        else:
            mean, std = mean_and_std(values)
            means.append(format(mean, spec))
            stds.append(format(std, spec))
    return means, stds


def results_table(runs: Sequence[Run]) -> str:
    header = ("| seed | steps | step_avg_ms | tok/s | pre-quant val_bpb | post-quant val_bpb "
              "| gap | bytes_total |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    rows, columns = [], []
    for run in runs:
        r = run.results
        post = r.get("q_val_bpb")
        gap = None if post is None else post - r["val_bpb"]
        cells = [(r["steps"], ","), (r["step_avg_ms"], ".2f"), (r["tok_per_s"], ",.0f"),
                 (r["val_bpb"], ".8f"), (post, ".8f"), (gap, ".8f"), (r["bytes_total"], ",")]
        rows.append(f"| {run.seed} | " + " | ".join(_cell(v, s) for v, s in cells) + " |")
        columns.append(cells)
    # Per-column summary; integer columns get a float format so a mean like 3600.5 shows.
    specs = [".1f", ".2f", ",.0f", ".8f", ".8f", ".8f", ",.0f"]
    by_column = [([cells[i][0] for cells in columns], spec) for i, spec in enumerate(specs)]
    means, stds = _mean_std_cells(by_column)
    rows.append("| **mean** | " + " | ".join(means) + " |")
    rows.append("| **std** | " + " | ".join(stds) + " |")
    return header + "\n" + "\n".join(rows)


def evals_table(runs: Sequence[Run]) -> str:
    """Every evaluation mode a run made (pre-quantization) and its export timings, one row per seed and mode."""
    header = ("| seed | eval mode | val_loss | val_bpb | eval time s | export s (gptq + compress + round trip) |\n"
              "|---|---|---:|---:|---:|---:|")
    rows = []
    for run in runs:
        export_times = run.results.get("export_times") or {}
        export = (f"{sum(export_times.values()):.1f} (" + " + ".join(f"{v:.1f}" for v in export_times.values()) + ")"
                  if export_times else "n/a")
        for mode, e in (run.results.get("evals") or {}).items():
            rows.append(f"| {run.seed} | {mode} | {e['val_loss']:.8f} | {e['val_bpb']:.8f} | {e['eval_time']:.1f} "
                        f"| {export} |")
    return header + "\n" + "\n".join(rows)


def build_readme(runs: Sequence[Run], submission: dict, commands: Sequence[str]) -> str:
    first = runs[0].results
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    command_block = ("```bash\n" + "\n".join(commands) + "\n```" if commands
                     else "Not recorded (pass `--command` to `records.py write`).")
    n = len(runs)
    return f"""# {submission['name']}

{submission['blurb'] or '(no description)'}

- Track: `{submission['track']}`
- Date: {submission['date']}
- Author: {submission['author'] or 'n/a'} ({submission['github_id'] or 'n/a'})
- Score (mean over {n} seed{'s' if n > 1 else ''}): val_loss {fmt8(submission['val_loss'])}, \
val_bpb {fmt8(submission['val_bpb'])} ± {fmt8(submission['val_bpb_std'])} (sample std)
- Artifact: {submission['bytes_total']:,} bytes at most (code {submission['bytes_code']:,} bytes; \
limit {ARTIFACT_LIMIT_BYTES:,})

## What was run

- Model preset: `{first['model_preset']}`, layout `{first['layout']}`, \
{_cell(first.get('params'), ',')} parameters
- Quantization: {first.get('quant_name') or 'none (bf16 score)'}
- Data: `{first['data_name']}`
- Hardware: {submission['hardware']}, world size {first['world_size']}
- Versions: {versions or 'n/a'}
- Script: `train_gpt.py`, sha256 `{first['code_sha256']}`
- Config: `config.yaml` (identical for all seeds apart from `train.seed` and `run.*`: ids, log \
paths, tracking)

## Command

{command_block}

## Results

{results_table(runs)}

The score is the last line of each log (`train_seed<seed>.log`): the post-quantization round \
trip when a model was exported, else pre-quantization. Gap = post - pre. \
Per-run results.json files are in `results/`.

## Evaluations (pre-quantization) and export time

{evals_table(runs)}

Eval times include any compilation the mode triggered in that process.
"""


def check_track(track: str) -> None:
    if track not in TRACKS:
        raise RecordError(f"unknown track {track!r}; allowed tracks: {', '.join(TRACKS)}")


def write_record(track: str, name: str, results_paths: Sequence[str | Path], *,
                 author: str = "", github_id: str = "", blurb: str = "",
                 records_dir: str | Path = "records", script: str | Path = "train_gpt.py",
                 commands: Sequence[str] = (), force: bool = False) -> Path:
    """Create records/<track>/<date>_<name>/ from the runs' results.json files; return its path.

    Raises RecordError (nothing written) when the inputs cannot form an honest record.
    """
    check_track(track)
    if not NAME_RE.match(name):
        raise RecordError(f"record name {name!r} must be letters, digits, '.', '_' or '-'")
    if not results_paths:
        raise RecordError("no results files given")
    script = Path(script)
    if not script.is_file():
        raise RecordError(f"script {script} does not exist")
    runs = [load_run(Path(p), track) for p in results_paths]
    check_runs_agree(runs, script)

    date = max(run.results["date"] for run in runs)  # the day the record was complete
    dest = Path(records_dir) / track / f"{date}_{name}"
    if dest.exists() and not force:
        raise RecordError(f"{dest} already exists (use --force to replace it)")
    submission = build_submission(runs, track, name, author, github_id, blurb, date)
    store_record(dest, runs, submission, script, commands)
    return dest


def store_record(dest: Path, runs: Sequence[Run], submission: dict, script: Path,
                 commands: Sequence[str], keep_valid: bool = False) -> None:
    """Write the record folder dest (replacing it). It is built next to dest and then swapped in, so a
    failure never leaves half a record; script and the runs' files may lie inside dest. keep_valid: a
    folder that validation would fault is not swapped in (RecordError naming its problems)."""
    staging = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "results").mkdir(parents=True)
    shutil.copyfile(script, staging / "train_gpt.py")
    for run in runs:
        shutil.copyfile(run.log_path, staging / f"train_seed{run.seed}.log")
        shutil.copyfile(run.results_path, staging / "results" / f"seed{run.seed}.json")
    (staging / "config.yaml").write_text(
        yaml.safe_dump(runs[0].results["config"], sort_keys=False), encoding="utf-8")
    (staging / "submission.json").write_text(json.dumps(submission, indent=2) + "\n",
                                             encoding="utf-8")
    (staging / "README.md").write_text(build_readme(runs, submission, commands),
                                       encoding="utf-8")
    problems = validate_record(staging) if keep_valid else []
    if problems:
        shutil.rmtree(staging)
        raise RecordError(f"with these runs {dest} would not be valid: {'; '.join(problems)}")
    if dest.exists():
        shutil.rmtree(dest)
    staging.rename(dest)


def record_runs(record: Path) -> tuple[dict, list[Run]]:
    """A valid record folder's submission.json and its runs (results/seed<seed>.json and train_seed<seed>.log)."""
    problems = validate_record(record)
    if problems:
        raise RecordError(f"{record} is not a valid record ({len(problems)} problem"
                          f"{'s' if len(problems) > 1 else ''}, first: {problems[0]}); "
                          f"see records.py validate {record}")
    submission = read_json(record / "submission.json")
    return submission, [load_run(record / "results" / f"seed{seed}.json", submission["track"],
                                 log_path=record / f"train_seed{seed}.log") for seed in submission["seeds"]]


def readme_commands(readme: Path) -> list[str]:
    """The lines of the bash block under '## Command' in a README.md that build_readme wrote (none if it
    says the command was not recorded)."""
    match = re.search(r"^## Command\n\n```bash\n(.*?)\n```$", readme.read_text(encoding="utf-8"), re.M | re.S)
    return match.group(1).split("\n") if match else []


def add_seeds(record: str | Path, results_paths: Sequence[str | Path],
              commands: Sequence[str] = ()) -> Path:
    """Add runs at new seeds to a valid record folder, in place: they must have run its stored train_gpt.py
    with its config apart from train.seed and run.*. Its name, author and blurb stay; the mean, std,
    bytes_total and date (the day the record was complete) are recomputed over all seeds, and commands
    are appended to the README's. Raises RecordError (nothing changed) when they cannot join it."""
    record = Path(record)
    if not results_paths:
        raise RecordError("no results files given")
    submission, held = record_runs(record)
    new = [load_run(Path(p), submission["track"]) for p in results_paths]
    taken = sorted({run.seed for run in new} & {run.seed for run in held})
    if taken:
        raise RecordError(f"seed{'s' if len(taken) > 1 else ''} {', '.join(map(str, taken))} "
                          f"already in {record} (its seeds: {submission['seeds']})")
    runs = held + new
    check_runs_agree(runs, record / "train_gpt.py")
    date = max(run.results["date"] for run in runs)
    updated = build_submission(runs, submission["track"], submission["name"], submission["author"],
                               submission["github_id"], submission["blurb"], date)
    store_record(record, runs, updated, record / "train_gpt.py",
                 readme_commands(record / "README.md") + list(commands), keep_valid=True)
    return record


def rerun_command(record: str | Path, seed: int, log_dir: str = "logs", run_id: str = "") -> str:
    """The command that runs a valid record's stored train_gpt.py with its config.yaml at another seed, on as
    many processes as it ran with, from the repository root (the config's data paths are relative to it)."""
    record = Path(record)
    submission, runs = record_runs(record)
    if seed in submission["seeds"]:
        raise RecordError(f"seed {seed} is already in {record} (its seeds: {submission['seeds']})")
    if not (record / "config.yaml").is_file():
        raise RecordError(f"{record / 'config.yaml'} is missing: the record does not hold its runs' config")
    return shlex.join(["torchrun", "--standalone", f"--nproc_per_node={runs[0].results['world_size']}",
                       str(record / "train_gpt.py"), "--config", str(record / "config.yaml"),
                       f"train.seed={seed}", f"run.log_dir={log_dir}", f"run.run_id={run_id}"])


# ---------------------------------------------------------------------------------------------
# validate


def submission_problems(sub: Any) -> list[str]:
    if not isinstance(sub, dict):
        return [f"submission.json: expected an object at the top level, got {json_type(sub)}"]
    return schema_problems("submission.json", sub, SUBMISSION_SCHEMA) or detail_problems(sub)


def detail_problems(sub: dict) -> list[str]:
    """Checks inside fields whose top-level types are already right."""
    problems = []
    if not is_iso_date(sub["date"]):
        problems.append(f"submission.json: field 'date': {sub['date']!r} is not YYYY-MM-DD")
    if sub["track"] not in TRACKS:
        problems.append(f"submission.json: field 'track': {sub['track']!r} is not one of "
                        f"{', '.join(TRACKS)}")
    for i, seed in enumerate(sub["seeds"]):
        if (problem := type_problem(f"submission.json: field 'seeds[{i}]'", seed, (INTEGER,))):
            problems.append(problem)
    if not sub["seeds"]:
        problems.append("submission.json: field 'seeds' is empty")
    elif sorted(str(s) for s in sub["seeds"]) != sorted(sub["seed_results"]):
        problems.append(f"submission.json: seeds {sub['seeds']} do not match the keys of "
                        f"seed_results {sorted(sub['seed_results'])}")
    for seed, result in sub["seed_results"].items():
        problems += seed_result_problems(seed, result)
    return problems


def seed_result_problems(seed: str, result: Any) -> list[str]:
    where = f"submission.json: seed_results['{seed}']"
    if not isinstance(result, dict):
        return [f"{where}: expected object, got {json_type(result)}"]
    return schema_problems(where, result, SEED_RESULT_SCHEMA)


def size_problems(sub: dict) -> list[str]:
    problems = []
    if sub["bytes_total"] > ARTIFACT_LIMIT_BYTES:
        problems.append(f"bytes_total {sub['bytes_total']:,} exceeds the "
                        f"{ARTIFACT_LIMIT_BYTES:,}-byte artifact limit")
    largest = max(r["artifact_bytes"] for r in sub["seed_results"].values())
    if sub["bytes_total"] != largest:
        problems.append(f"bytes_total {sub['bytes_total']:,} is not the largest seed "
                        f"artifact_bytes {largest:,}")
    return problems


def stored_results(record: Path, sub: dict) -> tuple[dict[str, dict], list[str]]:
    """Each seed's results/seed<seed>.json (schema-clean ones, by seed) and the problems of the
    missing, unreadable or ill-typed ones."""
    found, problems = {}, []
    for seed in sub["seed_results"]:
        name = f"results/seed{seed}.json"
        if not (record / name).is_file():
            problems.append(f"{name} is missing (seed {seed} is in seed_results)")
            continue
        try:
            results = read_json(record / name)
        except RecordError as e:
            problems.append(str(e))
            continue
        if not isinstance(results, dict):
            problems.append(f"{name}: expected a JSON object, got {json_type(results)}")
            continue
        schema = schema_problems(name, results, RESULTS_SCHEMA)
        if schema:
            problems += schema
            continue
        found[seed] = results
    return found, problems


def code_problems(record: Path, sub: dict, results_by_seed: dict[str, dict]) -> list[str]:
    """The stored train_gpt.py must be the exact script of every run: size and sha256."""
    script = record / "train_gpt.py"
    if not script.is_file():
        return []  # already reported as a missing file
    problems = []
    size = script.stat().st_size
    if size != sub["bytes_code"]:
        problems.append(f"train_gpt.py has {size:,} bytes but bytes_code is {sub['bytes_code']:,}")
    sha = sha256_of(script)
    for seed, results in results_by_seed.items():
        if results["code_sha256"] != sha:
            problems.append(f"train_gpt.py has sha256 {sha} but results/seed{seed}.json has "
                            f"code_sha256 {results['code_sha256']}: not the script that ran")
    return problems


def log_problems(record: Path, sub: dict) -> list[str]:
    """Each seed's log must end with the score line that seed_results reports."""
    problems = []
    for seed, result in sub["seed_results"].items():
        log = record / f"train_seed{seed}.log"
        if not log.is_file():
            problems.append(f"{log.name} is missing (seed {seed} is in seed_results)")
            continue
        line = last_line(log)
        printed = parse_final_line(line)
        if printed is None:
            problems.append(f"{log.name}: last line is not a final score line: {line!r:.120}")
            continue
        expected = (fmt8(result["val_loss"]), fmt8(result["val_bpb"]))
        for metric, got, want in zip(("val_loss", "val_bpb"), printed, expected):
            if got != want:
                problems.append(f"{log.name}: final line {metric} {got} disagrees with "
                                f"seed_results {want}")
    return problems


def summary_problems(sub: dict) -> list[str]:
    """val_loss, val_bpb and val_bpb_std must be the mean / sample std over seed_results."""
    results = list(sub["seed_results"].values())
    mean_loss, _ = mean_and_std([r["val_loss"] for r in results])
    mean_bpb, std_bpb = mean_and_std([r["val_bpb"] for r in results])
    problems = []
    for field, expected in (("val_loss", mean_loss), ("val_bpb", mean_bpb),
                            ("val_bpb_std", std_bpb)):
        if abs(sub[field] - expected) > SUMMARY_TOLERANCE:
            problems.append(f"{field} {sub[field]!r} disagrees with seed_results "
                            f"({fmt8(expected)})")
    return problems


def placement_problems(record: Path, sub: dict) -> list[str]:
    parent = record.resolve().parent.name
    if parent in TRACKS and parent != sub["track"]:
        return [f"track {sub['track']!r} but the record sits in {parent}/"]
    return []


def missing_file_problems(record: Path) -> list[str]:
    problems = [f"{name} is missing" for name in ("README.md", "submission.json", "train_gpt.py")
                if not (record / name).is_file()]
    if not any(record.glob("*.log")):
        problems.append("no training log (*.log) found")
    return problems


def validate_record(path: str | Path) -> list[str]:
    """Problems found in one record folder (empty list: valid).

    Checks that need well-typed fields run only once the schema is clean, so that one wrong
    field is reported once instead of as a cascade.
    """
    record = Path(path)
    if not record.is_dir():
        return ["is not a directory" if record.exists() else "does not exist"]
    problems = missing_file_problems(record)
    sub_path = record / "submission.json"
    if not sub_path.is_file():
        return problems
    try:
        sub = json.loads(sub_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return problems + [f"submission.json is not valid JSON ({e})"]
    schema = submission_problems(sub)
    if schema:
        return problems + schema
    results_by_seed, results_problems = stored_results(record, sub)
    rules = [problem for seed, results in results_by_seed.items()
             for problem in run_problems(f"results/seed{seed}.json", results, sub["track"])]
    return (problems + size_problems(sub) + code_problems(record, sub, results_by_seed)
            + log_problems(record, sub) + summary_problems(sub) + placement_problems(record, sub)
            + results_problems + rules)


def is_record_dir(path: Path) -> bool:
    return (path / "submission.json").is_file() or path.parent.name in TRACKS


def find_record_dirs(path: str | Path) -> list[Path]:
    """Record folders at or below path: a folder holding submission.json (write always makes
    one), or any folder directly inside a track folder (so a record missing it is still found).
    train_gpt.py is no marker: the repository root holds one too."""
    path = Path(path)
    if not path.is_dir():
        return []
    if is_record_dir(path):
        return [path]
    found = []
    for child in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found += find_record_dirs(child)
    return found


# ---------------------------------------------------------------------------------------------
# leaderboard


def leaderboard(records_dir: str | Path = "records") -> str:
    """Markdown: per track, valid records ranked by mean val_bpb (lowest first); records that fail
    validation are listed after the tables with their first problem instead of being ranked."""
    ranked: dict[str, list[dict]] = {track: [] for track in TRACKS}
    unranked = []
    for record in find_record_dirs(records_dir):
        problems = validate_record(record)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            unranked.append(f"- `{record}`: {problems[0]}{more}")
            continue
        submission = read_json(record / "submission.json")
        ranked[submission["track"]].append(submission)
    sections = [leaderboard_table(track, subs) for track, subs in ranked.items() if subs]
    if unranked:
        sections.append("## Not ranked (failed validation)\n\n" + "\n".join(unranked))
    if not sections:
        return f"No records found under {records_dir}.\n"
    return "# Leaderboard\n\n" + "\n\n".join(sections) + "\n"


def leaderboard_table(track: str, submissions: list[dict]) -> str:
    rows = ["| rank | date | name | val_bpb (mean ± std, n) | val_loss | bytes_total | hardware "
            "| model_preset |", "|---:|---|---|---|---:|---:|---|---|"]
    ordered = sorted(submissions, key=lambda s: (s["val_bpb"], s["date"], s["name"]))
    for rank, s in enumerate(ordered, start=1):
        bpb = f"{fmt8(s['val_bpb'])} ± {fmt8(s['val_bpb_std'])} (n={len(s['seeds'])})"
        rows.append(f"| {rank} | {s['date']} | {s['name']} | {bpb} | {fmt8(s['val_loss'])} "
                    f"| {s['bytes_total']:,} | {s['hardware']} | {s['model_preset']} |")
    return f"## {track}\n\n" + "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# statistics: Student t survival function and the margin-shifted Welch test

_CF_EPSILON = 2 * sys.float_info.epsilon
_CF_TINY = 1e-300
_CF_MAX_TERMS = 100_000


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction F in I_x(a,b) = x^a (1-x)^b / (a B(a,b)) * F, evaluated with the
    modified Lentz method; it converges fast for x < (a+1)/(a+b+2).
        F = 1/(1 + d1/(1 + d2/(1 + ...))),
        d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)),  d_{2m} = m(b-m)x / ((a+2m-1)(a+2m))."""
    # Lentz state after the leading 1/1: value f = 1, D = 1, and C infinite (a huge stand-in).
    f, d, c = 1.0, 1.0, 1.0 / _CF_TINY
    for k in range(1, _CF_MAX_TERMS):
        m = k // 2
        if k % 2:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > _CF_TINY else _CF_TINY)
        c = 1.0 + numerator / c
        c = c if abs(c) > _CF_TINY else _CF_TINY
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < _CF_EPSILON:
            return f
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b})")


def _stirling_tail(z: float) -> float:
    """lgamma(z) - [(z - 1/2) ln z - z + ln(2 pi)/2]: the Stirling series, accurate for z >= 100."""
    return 1 / (12 * z) - 1 / (360 * z ** 3) + 1 / (1260 * z ** 5)


def log_beta(a: float, b: float) -> float:
    """ln B(a, b). For a large argument (large df) lgamma(a) - lgamma(a+b) would cancel
    catastrophically, so that difference is taken from Stirling's series instead."""
    small, large = sorted((a, b))
    if large < 100:
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    gamma_ratio = (-(large - 0.5) * math.log1p(small / large) - small * math.log(large + small)
                   + small + _stirling_tail(large) - _stirling_tail(large + small))
    return math.lgamma(small) + gamma_ratio


def regularized_incomplete_beta(a: float, b: float, x: float, one_minus_x: float | None = None
                                ) -> float:
    """I_x(a, b). Pass one_minus_x when it is known more precisely than 1 - x (tails)."""
    y = 1.0 - x if one_minus_x is None else one_minus_x
    if x <= 0.0:
        return 0.0
    if y <= 0.0:
        return 1.0
    # Take the log of whichever of x, 1-x is the smaller: it carries the precision (log1p).
    log_x = math.log1p(-y) if x > 0.5 else math.log(x)
    log_y = math.log1p(-x) if y > 0.5 else math.log(y)
    front = math.exp(a * log_x + b * log_y - log_beta(a, b))
    # The fraction converges quickly only below the mean; above it use I_x(a,b) = 1 - I_y(b,a).
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_continued_fraction(a, b, x) / a
    return 1.0 - front * _beta_continued_fraction(b, a, y) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T >= t) for Student's t with df > 0 degrees of freedom (df may be math.inf)."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(df):
        return 0.5 * math.erfc(t / math.sqrt(2.0))
    t2 = t * t
    if math.isinf(t2):
        return 0.0 if t > 0 else 1.0
    # P(|T| >= |t|) = I_{df/(df+t^2)}(df/2, 1/2); 1-x is formed directly to keep tail precision.
    two_sided = regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t2), t2 / (df + t2))
    return 0.5 * two_sided if t >= 0 else 1.0 - 0.5 * two_sided


def welch_margin_test(new: Sequence[float], old: Sequence[float], margin: float = 0.005,
                      alpha: float = 0.01) -> dict:
    """One-sided Welch t-test of H1: mean(old) - mean(new) > margin (lower is better).

    Equivalent to scipy.stats.ttest_ind(new + margin, old, equal_var=False,
    alternative="less"). Also returns the unshifted test (margin 0), which overstates how
    clearly NEW beats OLD by the required margin.
    """
    if len(new) < 2 or len(old) < 2:
        raise ValueError(f"the Welch test needs at least 2 values per side "
                         f"(new has {len(new)}, old has {len(old)})")
    mean_new, std_new = mean_and_std(new)
    mean_old, std_old = mean_and_std(old)
    var_mean_new, var_mean_old = std_new ** 2 / len(new), std_old ** 2 / len(old)
    se = math.sqrt(var_mean_new + var_mean_old)
    if se == 0.0:
        raise ValueError("both samples have zero variance; the t-test is undefined")
    # Welch-Satterthwaite approximation of the degrees of freedom.
    df = (var_mean_new + var_mean_old) ** 2 / (
        var_mean_new ** 2 / (len(new) - 1) + var_mean_old ** 2 / (len(old) - 1))
    difference = mean_old - mean_new
    t = (difference - margin) / se
    t_unshifted = difference / se
    p = student_t_sf(t, df)
    return {
        "mean_new": mean_new, "std_new": std_new, "n_new": len(new),
        "mean_old": mean_old, "std_old": std_old, "n_old": len(old),
        "difference": difference, "margin": margin, "se": se, "df": df,
        "t": t, "p": p, "t_unshifted": t_unshifted, "p_unshifted": student_t_sf(t_unshifted, df),
        "alpha": alpha, "clears": p < alpha,
    }


def valid_seed_values(record: str | Path, metric: str) -> list[float]:
    """Per-seed values of metric from a record's submission.json; RecordError naming every
    problem if the record does not validate. A record this tool wrote (it has results/) is
    validated in full; one in the challenge's own format (the usual old side of a comparison:
    submission.json, logs and script, no results/) needs a numeric metric for every seed and
    bytes_total within the artifact limit."""
    record = Path(record)
    if (record / "results").is_dir() or not record.is_dir():
        problems = validate_record(record)
    else:
        problems = challenge_record_problems(read_json(record / "submission.json"), metric)
    if problems:
        raise RecordError(f"{record} is not a valid record: {'; '.join(problems)}")
    sub = read_json(record / "submission.json")
    return [result[metric] for result in sub["seed_results"].values()]


def challenge_record_problems(sub: Any, metric: str) -> list[str]:
    """What compare needs from a submission.json in the challenge's format."""
    is_number = lambda v: type_problem("", v, (NUMBER,)) is None
    if not isinstance(sub, dict):
        return [f"submission.json: expected a JSON object, got {json_type(sub)}"]
    seeds, problems = sub.get("seed_results"), []
    if not isinstance(seeds, dict) or not seeds:
        problems.append("submission.json has no seed_results object with per-seed results")
    else:
        lacking = [seed for seed, result in seeds.items() if not (isinstance(result, dict) and is_number(result.get(metric)))]
        if lacking:
            problems.append(f"submission.json seed_results {', '.join(lacking)}: no numeric {metric}")
    total = sub.get("bytes_total")
    if not is_number(total) or total > ARTIFACT_LIMIT_BYTES:
        problems.append(f"submission.json bytes_total {total!r}: expected a byte count within the "
                        f"{ARTIFACT_LIMIT_BYTES:,}-byte artifact limit")
    return problems


# ---------------------------------------------------------------------------------------------
# command line


def cmd_write(args: argparse.Namespace) -> int:
    dest = write_record(args.track, args.name, args.results, author=args.author,
                        github_id=args.github_id, blurb=args.blurb,
                        records_dir=args.records_dir, script=args.script,
                        commands=args.command, force=args.force)
    print(f"wrote {dest}")
    problems = validate_record(dest)
    for problem in problems:
        print(f"{dest}: {problem}")
    return 1 if problems else 0


def cmd_add(args: argparse.Namespace) -> int:
    dest = add_seeds(args.record, args.results, commands=args.command)  # validated before it was swapped in
    print(f"added seed{'s' if len(args.results) > 1 else ''} to {dest}")
    return 0


def cmd_rerun(args: argparse.Namespace) -> int:
    print(rerun_command(args.record, args.seed, args.log_dir, args.run_id))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for path in args.paths:
        records = find_record_dirs(path)
        if not records:
            print(f"{path}: no record folders found")
            failed = True
        for record in records:
            problems = validate_record(record)
            for problem in problems:
                print(f"{record}: {problem}")
            if not problems:
                print(f"ok {record}")
            failed = failed or bool(problems)
    return 1 if failed else 0


def cmd_leaderboard(args: argparse.Namespace) -> int:
    if not Path(args.records_dir).is_dir():
        raise RecordError(f"records directory {args.records_dir} does not exist")
    print(leaderboard(args.records_dir), end="")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    new, old = valid_seed_values(args.new, args.metric), valid_seed_values(args.old, args.metric)
    try:
        r = welch_margin_test(new, old, args.margin, args.alpha)
    except ValueError as e:
        raise RecordError(str(e)) from None
    print(f"metric: {args.metric} (lower is better)")
    print(f"new: {args.new}  n={r['n_new']} mean={r['mean_new']:.8f} std={r['std_new']:.8f}")
    print(f"old: {args.old}  n={r['n_old']} mean={r['mean_old']:.8f} std={r['std_old']:.8f}")
    print(f"difference (old - new): {r['difference']:.8f}")
    print(f"margin: {r['margin']}")
    print(f"shifted Welch test, H1: old - new > margin: t={r['t']:.6f} df={r['df']:.4f} "
          f"p={r['p']:.6g}")
    print(f"unshifted (reference only), H1: old - new > 0: t={r['t_unshifted']:.6f} "
          f"p={r['p_unshifted']:.6g}")
    print(f"alpha: {r['alpha']}")
    print(f"clears: {'yes' if r['clears'] else 'no'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command_name", required=True)

    write = sub.add_parser("write", help="build a record folder from runs' results.json files")
    write.add_argument("--track", required=True, help=f"one of {', '.join(TRACKS)}")
    write.add_argument("--name", required=True, help="record name (folder: <date>_<name>)")
    write.add_argument("--results", required=True, nargs="+", help="results.json of each seed")
    write.add_argument("--author", default="")
    write.add_argument("--github-id", default="")
    write.add_argument("--blurb", default="")
    write.add_argument("--records-dir", default="records")
    write.add_argument("--script", default="train_gpt.py", help="the train_gpt.py that ran")
    write.add_argument("--command", action="append", default=[],
                       help="command that produced the runs (repeatable), shown in README.md")
    write.add_argument("--force", action="store_true", help="replace an existing record folder")
    write.set_defaults(handler=cmd_write)

    add = sub.add_parser("add", help="add runs at new seeds to a record folder, in place")
    add.add_argument("record", help="the record folder")
    add.add_argument("--results", required=True, nargs="+", help="results.json of each new seed")
    add.add_argument("--command", action="append", default=[],
                     help="command that produced the new runs (repeatable), appended in README.md")
    add.set_defaults(handler=cmd_add)

    rerun = sub.add_parser("rerun", help="print the command that runs a record's script and config at another seed")
    rerun.add_argument("record", help="the record folder")
    rerun.add_argument("--seed", required=True, type=int)
    rerun.add_argument("--log-dir", default="logs")
    rerun.add_argument("--run-id", default="", help="default: generated by the trainer")
    rerun.set_defaults(handler=cmd_rerun)

    validate = sub.add_parser("validate", help="check record folders or trees of them")
    validate.add_argument("paths", nargs="+")
    validate.set_defaults(handler=cmd_validate)

    board = sub.add_parser("leaderboard", help="markdown leaderboard of valid records")
    board.add_argument("--records-dir", default="records")
    board.add_argument("--format", choices=["markdown"], default="markdown")
    board.set_defaults(handler=cmd_leaderboard)

    compare = sub.add_parser("compare", help="margin-shifted one-sided Welch test, NEW vs OLD")
    compare.add_argument("new", help="record folder of the candidate")
    compare.add_argument("old", help="record folder of the current best")
    compare.add_argument("--margin", type=float, default=0.005, help="required improvement")
    compare.add_argument("--alpha", type=float, default=0.01)
    compare.add_argument("--metric", choices=["val_loss", "val_bpb"], default="val_loss")
    compare.set_defaults(handler=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except RecordError as e:
        print(f"records.py {args.command_name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

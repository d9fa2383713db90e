#!/usr/bin/env python3
"""report.py: tables and plots of a sweep directory written by sweep.py.

    python report.py sweeps/gdn_vs_attention

Writes into the sweep directory:
    report.md        the job table, per-group means and stds over seeds, the plots
    report.csv       one row per job, numbers exactly as read
    groups.csv       one row per group: the jobs that share every swept value except train.seed
    curves.png       val_bpb over training wallclock per job (train_loss when the runs logged no intermediate val)
    tok_per_s.png    training throughput per group
    grad_split.png   gradient share by block type and, inside GDN, by GDN group (runs with train.grad_split_every)

Every number is read back from a job's results.json, its log (<run_id>.txt) or its grad_split.jsonl, never
recomputed from a config; resolved.yaml only names the model and seed of jobs that produced no results.
A job directory is a subdirectory holding status.json or resolved.yaml; a directory without any is an error.
Only the standard library, PyYAML and matplotlib (for the plots; without it the tables are still written)
are needed.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

TRAIN_RE = re.compile(r"^step:(\d+)/\d+ train_loss:(\S+) .*\belapsed:([\d.]+)s")
VAL_RE = re.compile(r"^step:(\d+) val_loss:\S+ val_bpb:(\S+)")
QUANT_GAP_RE = re.compile(r"^quant_gap_bpb:(\S+)")
SEED_KEY = "train.seed"
LINESTYLES = ("-", "--", ":", "-.")
BLOCK_TYPES = ("gdn", "attn", "mlp", "embed", "skip")
JOB_COLUMNS = ("job", "group", "status", "model_preset", "layout", "seed", "params", "tok_per_s", "steps",
               "tokens_seen", "train_time_s", "val_bpb", "q_val_bpb", "quant_gap_bpb", "bytes_total",
               "gdn_grad_share", "error")
GROUP_METRICS = ("val_bpb", "q_val_bpb", "quant_gap_bpb", "tok_per_s", "steps", "tokens_seen", "params",
                 "bytes_total", "gdn_grad_share")
FORMATS = {"val_bpb": ".4f", "q_val_bpb": ".4f", "quant_gap_bpb": "+.5f", "tok_per_s": ",.0f", "steps": ".0f",
           "tokens_seen": ",.0f", "params": ",.0f", "bytes_total": ",.0f", "gdn_grad_share": ".3f",
           "train_time_s": ".1f"}


@dataclass
class JobRecord:
    job_id: str
    dir: Path
    status: str
    error: str
    overrides: dict       # the swept keys' values (status.json)
    config: dict          # resolved.yaml
    results: dict | None  # results.json
    log: dict             # parse_log()
    grad: dict | None     # grad_split_means()

    @property
    def group(self) -> str:
        """The swept values other than the seed; a config-group choice (`model=attention`) by its value alone."""
        parts = [v if "." not in k else f"{k}={v}" for k, v in self.overrides.items() if k != SEED_KEY]
        return ",".join(parts) or "all"


class NotASweepDir(ValueError):
    """A directory with no job dirs in it (e.g. sweeps/ instead of sweeps/<name>)."""


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def parse_log(path: Path) -> dict:
    """Train points (step, loss, elapsed), intermediate val points (step, val_bpb), the quantization gap.
    The log starts with the script's source: only lines after the `config:` line are read."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
    start = next((i for i, line in enumerate(lines) if line.startswith("config:")), len(lines))
    train, val, gap = [], [], None
    for line in lines[start:]:
        if m := TRAIN_RE.match(line):
            train.append((int(m[1]), float(m[2]), float(m[3])))
        elif m := VAL_RE.match(line):
            val.append((int(m[1]), float(m[2])))
        elif m := QUANT_GAP_RE.match(line):
            gap = float(m[1])
    return dict(train=train, val=val, quant_gap_bpb=gap)


def grad_split_means(path: Path) -> dict | None:
    """Mean share of the squared gradient norm over the measured steps, by block type and by sub-group."""
    if not path.exists():
        return None
    steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not steps:
        return None
    mean = lambda part: {k: sum(s[part].get(k, 0.0) for s in steps) / len(steps)
                         for k in sorted({k for s in steps for k in s[part]})}
    return dict(type=mean("type"), group=mean("group"), steps=len(steps))


def load_job(job_dir: Path) -> JobRecord:
    status = read_json(job_dir / "status.json") or {}
    job_id = status.get("job_id", job_dir.name)
    resolved = job_dir / "resolved.yaml"
    return JobRecord(job_id=job_id, dir=job_dir, status=status.get("status", "unknown"),
                     error=status.get("error", ""), overrides=status.get("overrides", {}),
                     config=yaml.safe_load(resolved.read_text()) if resolved.exists() else {},
                     results=read_json(job_dir / f"{job_id}.results.json"),
                     log=parse_log(job_dir / f"{job_id}.txt"),
                     grad=grad_split_means(job_dir / f"{job_id}.grad_split.jsonl"))


def is_job_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "status.json").exists() or (path / "resolved.yaml").exists())


def load_jobs(sweep_dir: Path) -> list[JobRecord]:
    """Every job dir of a sweep dir; NotASweepDir if it holds none."""
    job_dirs = [d for d in sweep_dir.iterdir() if is_job_dir(d)]
    if not job_dirs:
        sweeps = sorted(d.name for d in sweep_dir.iterdir() if d.is_dir() and any(map(is_job_dir, d.iterdir())))
        hint = f"; it holds the sweep dirs {', '.join(sweeps)}" if sweeps else ""
        raise NotASweepDir(f"{sweep_dir} holds no job dirs (subdirectories with a status.json or resolved.yaml): "
                           f"expected a sweep dir written by sweep.py, e.g. sweeps/<name>{hint}")
    jobs = [load_job(d) for d in job_dirs]
    return sorted(jobs, key=lambda j: (j.group, str(j.overrides.get(SEED_KEY, "")).zfill(12), j.job_id))


def job_row(job: JobRecord) -> dict:
    r = job.results if job.status == "ok" else None
    cfg_model, cfg_train = job.config.get("model", {}), job.config.get("train", {})
    row = dict(job=job.job_id, group=job.group, status=job.status,
               model_preset=r["model_preset"] if r else cfg_model.get("preset"),
               layout=r["layout"] if r else cfg_model.get("layout"),
               seed=r["seed"] if r else cfg_train.get("seed"), error=job.error,
               wandb_group=job.config.get("run", {}).get("wandb_group"))
    for key in ("params", "tok_per_s", "steps", "tokens_seen", "train_time_s", "val_bpb", "q_val_bpb", "bytes_total"):
        row[key] = r.get(key) if r else None
    row["quant_gap_bpb"] = job.log["quant_gap_bpb"] if r else None
    row["gdn_grad_share"] = job.grad["type"].get("gdn", 0.0) if r and job.grad else None
    return row


def mean_std(values: list) -> tuple:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def group_rows(rows: list[dict]) -> list[dict]:
    groups = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    out = []
    for name, members in groups.items():
        ok = [m for m in members if m["status"] == "ok"]
        g = dict(group=name, jobs=len(members), ok=len(ok), seeds=" ".join(str(m["seed"]) for m in ok))
        for metric in GROUP_METRICS:
            g[f"{metric}_mean"], g[f"{metric}_std"] = mean_std([m[metric] for m in ok])
        out.append(g)
    return out


def fmt(value, spec: str = "") -> str:
    if value is None:
        return ""
    return format(value, spec) if spec and isinstance(value, (int, float)) else str(value)


def write_csv(path: Path, rows: list[dict], columns) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows({k: "" if row.get(k) is None else row[k] for k in columns} for row in rows)


def markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *body]]


def write_markdown(path: Path, sweep_dir: Path, rows: list[dict], groups: list[dict], plots: dict) -> None:
    n_ok = sum(r["status"] == "ok" for r in rows)
    lines = [f"# Sweep {sweep_name(sweep_dir, rows)}", "", f"`{sweep_dir}`: {len(rows)} jobs, {n_ok} ok, {len(rows) - n_ok} not ok. "
             "Numbers are read from each job's results.json, log and grad_split.jsonl; q_val_bpb is the int "
             "round trip (the score line), quant_gap_bpb the log's `quant_gap_bpb`, gdn_grad_share the mean "
             "share of the squared gradient norm in GDN blocks over the measured steps.", "", "## Jobs", ""]
    job_cols = [c for c in JOB_COLUMNS if c not in ("job", "error")]
    body = [[r["job"]] + [fmt(r[c], FORMATS.get(c, "")) for c in job_cols] for r in rows]
    lines += markdown_table(["job"] + job_cols, body)
    errors = [f"- `{r['job']}`: {r['status']}: {r['error']}" for r in rows if r["status"] != "ok"]
    lines += ["", "Jobs that did not succeed:", "", *errors] if errors else []
    lines += ["", "## Groups (mean ± std over seeds, ok jobs only)", ""]
    body = [[g["group"], str(g["ok"]), str(g["jobs"]), g["seeds"]]
            + [mean_std_text(g, m) for m in GROUP_METRICS] for g in groups]
    lines += markdown_table(["group", "ok", "jobs", "seeds", *GROUP_METRICS], body)
    lines += ["", "## Plots", ""] + [f"![{name}]({file.name})" if file else f"- {name}: {why}"
                                     for name, (file, why) in plots.items()]
    path.write_text("\n".join(lines) + "\n")


def sweep_name(sweep_dir: Path, rows: list[dict]) -> str:
    """sweep.py makes the sweep name every job's wandb group."""
    groups = {r["wandb_group"] for r in rows if r.get("wandb_group")}
    return groups.pop() if len(groups) == 1 else sweep_dir.name


def mean_std_text(group: dict, metric: str) -> str:
    mean, std = group[f"{metric}_mean"], group[f"{metric}_std"]
    spec = FORMATS[metric]
    return fmt(mean, spec) + (f" ± {format(std, spec.lstrip('+'))}" if std is not None else "")


# ----------------------------------------------------------------------------------------------------
# Plots (matplotlib, Agg)

def group_colors(rows: list[dict]) -> dict:
    import matplotlib.pyplot as plt
    names = list(dict.fromkeys(r["group"] for r in rows))
    return {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(names)}


def elapsed_at(step: int, train: list[tuple]) -> float:
    """Training wallclock at a step, interpolated between log steps (validation pauses the clock)."""
    points = [(0, 0.0)] + [(s, e) for s, _, e in train]
    for (s0, e0), (s1, e1) in zip(points, points[1:]):
        if s0 <= step <= s1:
            return e0 + (e1 - e0) * (step - s0) / max(s1 - s0, 1)
    return points[-1][1]


def plot_curves(path: Path, jobs: list[JobRecord], colors: dict) -> str:
    import matplotlib.pyplot as plt
    ok = [j for j in jobs if j.status == "ok" and j.results]
    use_val = all(j.log["val"] for j in ok)
    fig, ax = plt.subplots(figsize=(9, 5.5))
    labelled, seeds_seen = set(), {}
    for job in ok:
        if use_val:  # intermediate val points, then the final eval at the end of the training clock
            x = [elapsed_at(s, job.log["train"]) for s, _ in job.log["val"]] + [job.results["train_time_s"]]
            y = [bpb for _, bpb in job.log["val"]] + [job.results["val_bpb"]]
        else:
            x, y = [e for _, _, e in job.log["train"]], [loss for _, loss, _ in job.log["train"]]
        label = None if job.group in labelled else job.group
        labelled.add(job.group)
        nth = seeds_seen[job.group] = seeds_seen.get(job.group, -1) + 1  # seeds of a group: same colour, own dashes
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.5, alpha=0.85, color=colors[job.group], label=label,
                linestyle=LINESTYLES[nth % len(LINESTYLES)])
    ax.set_xlabel("training wallclock (s; validation pauses the clock)")
    ax.set_ylabel("val_bpb (final point: end-of-training eval)" if use_val else
                  "train_loss (no intermediate val lines in these runs)")
    ax.set_title(("val_bpb" if use_val else "train_loss") + " over training wallclock (line style: seed)")
    ax.grid(alpha=0.3)
    ax.legend(title="group")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return "val_bpb" if use_val else "train_loss"


def plot_tok_per_s(path: Path, rows: list[dict], groups: list[dict], colors: dict) -> None:
    import matplotlib.pyplot as plt
    shown = [g for g in groups if g["tok_per_s_mean"] is not None]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(shown) + 2), 4.8))
    for i, g in enumerate(shown):
        ax.bar(i, g["tok_per_s_mean"], yerr=g["tok_per_s_std"] or 0, capsize=6, color=colors[g["group"]], alpha=0.8)
        seeds = [r["tok_per_s"] for r in rows if r["group"] == g["group"] and r["status"] == "ok"]
        ax.scatter([i] * len(seeds), seeds, color="black", s=14, zorder=3)
        top = max([g["tok_per_s_mean"] + (g["tok_per_s_std"] or 0)] + seeds)
        ax.annotate(f"{g['tok_per_s_mean']:,.0f}", (i, top), textcoords="offset points", xytext=(0, 5),
                    ha="center", fontsize=9)
    ax.set_xticks(range(len(shown)), [g["group"] for g in shown], rotation=20, ha="right")
    ax.set_ylabel("training tokens/s (mean ± std; dots: seeds)")
    ax.set_title("throughput per group")
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.15)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stacked_bars(ax, names: list[str], shares: list[dict], keys: list[str], cmap) -> None:
    bottom = [0.0] * len(names)
    for k, key in enumerate(keys):
        heights = [s.get(key, 0.0) for s in shares]
        ax.bar(range(len(names)), heights, bottom=bottom, color=cmap(k % cmap.N), label=key, edgecolor="white")
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylim(0, 1.0)
    handles, labels = ax.get_legend_handles_labels()  # top to bottom, as stacked
    ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_grad_split(path: Path, jobs: list[JobRecord]) -> bool:
    """Left: share of the gradient by block type. Right: the GDN groups as shares of the GDN gradient."""
    import matplotlib.pyplot as plt
    by_group = {}
    for job in jobs:
        if job.status == "ok" and job.grad:
            by_group.setdefault(job.group, []).append(job.grad)
    if not by_group:
        return False
    names = list(by_group)
    mean = lambda grads, part: {k: statistics.fmean(g[part].get(k, 0.0) for g in grads)
                                for k in {k for g in grads for k in g[part]}}
    types = [mean(by_group[n], "type") for n in names]
    gdn = []
    for n in names:
        groups = {k: v for k, v in mean(by_group[n], "group").items() if k.startswith("gdn.")}
        total = sum(groups.values())
        gdn.append({k: v / total for k, v in groups.items()} if total > 0 else {})
    gdn_keys = sorted({k for g in gdn for k in g}, key=lambda k: -statistics.fmean(g.get(k, 0.0) for g in gdn))
    fig, (left, right) = plt.subplots(1, 2, figsize=(max(10, 2.4 * len(names) + 5), 5))
    stacked_bars(left, names, types, [t for t in BLOCK_TYPES if any(t in s for s in types)], plt.get_cmap("Set2"))
    left.set_ylabel("share of the squared gradient norm")
    left.set_title("by block type (mean over measured steps and seeds)", fontsize=10)
    stacked_bars(right, names, gdn, gdn_keys, plt.get_cmap("tab20"))
    right.set_ylabel("share of the GDN blocks' squared gradient norm")
    right.set_title("inside the GDN blocks, by parameter group", fontsize=10)
    for i, g in enumerate(gdn):
        if not g:
            right.text(i, 0.5, "no GDN\nblocks", ha="center", va="center", fontsize=9, color="gray")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_plots(sweep_dir: Path, jobs: list[JobRecord], rows: list[dict], groups: list[dict]) -> dict:
    """name -> (file or None, why not); without matplotlib or data a plot is listed as missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
    except ImportError:
        return {"plots": (None, "matplotlib is not installed (pip install matplotlib)")}
    if not any(r["status"] == "ok" for r in rows):
        return {"plots": (None, "no job succeeded")}
    colors = group_colors(rows)
    plots = {}
    metric = plot_curves(sweep_dir / "curves.png", jobs, colors)
    plots[f"{metric} over wallclock"] = (sweep_dir / "curves.png", "")
    plot_tok_per_s(sweep_dir / "tok_per_s.png", rows, groups, colors)
    plots["tok/s"] = (sweep_dir / "tok_per_s.png", "")
    has_split = plot_grad_split(sweep_dir / "grad_split.png", jobs)
    plots["gradient split"] = (sweep_dir / "grad_split.png", "") if has_split else \
        (None, "no grad_split.jsonl (set train.grad_split_every)")
    return plots


def write_report(sweep_dir) -> list[Path]:
    sweep_dir = Path(sweep_dir)
    jobs = load_jobs(sweep_dir)
    rows = [job_row(j) for j in jobs]
    groups = group_rows(rows)
    write_csv(sweep_dir / "report.csv", rows, JOB_COLUMNS)
    group_columns = ["group", "jobs", "ok", "seeds"] + [f"{m}_{s}" for m in GROUP_METRICS for s in ("mean", "std")]
    write_csv(sweep_dir / "groups.csv", groups, group_columns)
    plots = write_plots(sweep_dir, jobs, rows, groups)
    write_markdown(sweep_dir / "report.md", sweep_dir, rows, groups, plots)
    return [sweep_dir / "report.md", sweep_dir / "report.csv", sweep_dir / "groups.csv"] + \
        [file for file, _ in plots.values() if file]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"report.py: {args.sweep_dir} is not a directory", file=sys.stderr)
        return 2
    try:
        paths = write_report(args.sweep_dir)
    except NotASweepDir as e:
        print(f"report.py: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

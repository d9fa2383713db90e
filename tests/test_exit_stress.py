"""scripts/exit_stress.sh: the two-rank run it repeats still runs and is counted, and bad arguments are named."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def stress(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "exit_stress.sh"), *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, PYTHON=sys.executable, WORK=str(tmp_path)))


def test_one_run_per_trainer_is_counted(tmp_path):
    """Two trainers (the same file under two names) alternate; every run exits 0 with its final line."""
    other = tmp_path / "copy_of_train_gpt.py"
    other.write_bytes((ROOT / "train_gpt.py").read_bytes())
    proc = stress("1", str(ROOT / "train_gpt.py"), str(other), tmp_path=tmp_path / "work")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = re.findall(r"^run:1 trainer:(\S+) rc:(\d+) final_line:(\d) abort:(\d)$", proc.stdout, re.M)
    assert runs == [(str(ROOT / "train_gpt.py"), "0", "1", "0"), (str(other), "0", "1", "0")], proc.stdout
    assert proc.stdout.count(" runs:1 failed:0 ") == 2
    assert not list(ROOT.glob(".exit_stress_*"))  # the copies beside conf/ are removed


def test_bad_arguments_are_named(tmp_path):
    missing = stress("3", str(tmp_path / "nowhere.py"), tmp_path=tmp_path)
    assert missing.returncode == 2 and f"trainer {tmp_path / 'nowhere.py'}: no such file" in missing.stderr
    bad_runs = stress("three", str(ROOT / "train_gpt.py"), tmp_path=tmp_path)
    assert bad_runs.returncode == 2 and "RUNS: 'three' is not a positive whole number" in bad_runs.stderr
    assert "usage:" in stress("3", tmp_path=tmp_path).stderr

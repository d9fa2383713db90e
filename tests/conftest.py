"""Shared fixtures: the repo root on sys.path, and a small synthetic dataset built once per session."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "data"))

# A narrow model and short sequences: the CPU tests train real steps in seconds.
TINY = ["budget=cpu_smoke", "model.model_dim=64", "model.num_heads=2", "model.num_kv_heads=1", "model.gdn_heads=2",
        "model.gdn_head_dim=32", "train.seq_len=64", "train.global_batch_tokens=512", "train.micro_batch_seqs=4",
        "train.warmup_steps=0", "train.log_every=1", "eval.batch_seqs=32", "export=none"]


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> dict:
    """A small synthetic corpus (the embedded default's generator with fewer documents)."""
    return build_synthetic_data(tmp_path_factory.mktemp("synthetic"))


def build_synthetic_data(root: Path) -> dict:
    """The synthetic_data fixture's corpus under root (also built by scripts/exit_stress.sh)."""
    import synthetic
    out, tok = root / "shards", root / "tok" / "synthetic.model"
    meta = synthetic.build(out, tok, train_docs=1500, val_docs=60, vocab_size=8192, seed=0, workers=1, progress=False)
    overrides = [f"data.train_files={out}/synthetic_train_*.bin", f"data.val_files={out}/synthetic_val_*.bin",
                 f"data.tokenizer_path={tok}"]
    return dict(dir=out, tokenizer=tok, meta=meta, overrides=overrides)


def run_trainer(args: list[str], nproc: int = 1, log_dir: Path | None = None, timeout: int = 600) -> tuple[str, dict]:
    """Run train_gpt.py under torchrun in a subprocess; return its stdout and the results JSON."""
    import json
    run_id = "test_" + os.urandom(4).hex()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "train_gpt.py"), *args, f"run.log_dir={log_dir}", f"run.run_id={run_id}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(f"train_gpt.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc.stdout, json.loads((log_dir / f"{run_id}.results.json").read_text())

"""scripts/residual_dtype_check.py on the synthetic shards, so that it cannot rot."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_residual_dtype_check_compares_both_streams(synthetic_data, tmp_path):
    proc = subprocess.run([sys.executable, "scripts/residual_dtype_check.py", "--data-dir", str(synthetic_data["dir"]),
                           "--steps", "2", "--seq-len", "16", "--val-batches", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    val = dict(re.findall(r"^bf16_residual:(\w+) val_loss:(\S+)$", proc.stdout, re.M))
    assert set(val) == {"False", "True"} and val["False"] != val["True"]  # the switch changes the arithmetic
    proc = subprocess.run([sys.executable, "scripts/residual_dtype_check.py", "--data-dir", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"--data-dir {tmp_path}: no *_train_*.bin shard" in proc.stderr
    proc = subprocess.run([sys.executable, "scripts/residual_dtype_check.py", "--data-dir", str(synthetic_data["dir"]),
                           "--steps", "2"], cwd=ROOT, capture_output=True, text=True, timeout=120)  # val: < 8 x 16 x 256
    assert proc.returncode == 2 and re.search(r"synthetic_val_000000.bin: \d+ tokens, too few for 8 batches of 16 x 256",
                                              proc.stderr)

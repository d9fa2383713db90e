"""scripts/warmup_profile.py on CPU (a tiny model, inductor's C++ backend), so that it cannot rot: every phase is
reported, and a second launch with the same cache directory compiles faster (the caches it points at are used)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def phases(cache_dir: Path) -> dict[str, str]:
    proc = subprocess.run([sys.executable, "scripts/warmup_profile.py", "--cache-dir", str(cache_dir), "--cpu-smoke",
                           "--seq-len", "64", "--compiled-steps", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TorchDynamo compilation metrics" in proc.stdout
    found = dict(re.findall(r"^warmup phase:(\S+) seconds:(\S+)", proc.stdout, re.M))
    found["caches"] = re.search(r"caches:(\w+)", proc.stdout)[1]
    return found


def test_warmup_profile_reports_phases_and_a_warm_cache_compiles_faster(tmp_path):
    cold, warm = phases(tmp_path / "caches"), phases(tmp_path / "caches")
    names = {"eager_first_step", "eager_second_step", "compiled_first_step", "compiled_next_steps", "caches"}
    assert set(cold) == set(warm) == names
    assert (cold["caches"], warm["caches"]) == ("cold", "warm")
    assert float(warm["compiled_first_step"]) < float(cold["compiled_first_step"]) / 2

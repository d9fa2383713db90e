"""scripts/fla_config_sweep.py without a GPU: its table must still name FLA's kernels and sweep every meta-parameter
FLA's own autotuning sets, or pinning a config would launch a kernel with a parameter missing."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
pytest.importorskip("fla")
import fla_config_sweep as sweep  # noqa: E402


def test_table_covers_fla_autotuners():
    table = sweep.kernels()
    assert tuple(table) == sweep.KERNEL_NAMES
    for name, (kernel, call, space) in table.items():
        tuner = sweep.autotuner(kernel)
        fla_keys = {key for config in tuner.configs for key in config.kwargs}
        assert space and all(set(config.kwargs) == fla_keys for config in space), name
        assert fla_keys <= set(tuner.arg_names), name
        assert len({sweep.describe(config) for config in space}) == len(space), name  # no config twice
        assert callable(call)


def test_unknown_kernel_is_an_error_naming_the_choices():
    proc = subprocess.run([sys.executable, "scripts/fla_config_sweep.py", "--kernels", "wy_bwdd"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "wy_bwdd" in proc.stderr and "bwd_dhu" in proc.stderr

"""scripts/inductor_codegen_offline.py: inductor's Triton kernels generated without a GPU (fusion decisions only)."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gdn_output_norm_is_one_kernel_in_every_offline_case():
    """Each case's norm is one persistent reduction that stores rstd and the normalised output together (a split
    norm, as the whole model on the GPU showed in docs/perf.md run BD, would be a kernel storing rstd alone plus a
    pointwise kernel). The training-forward mixer uses train_gpt's real GatedDeltaNet and gdn_core_fwd op."""
    proc = subprocess.run([sys.executable, "scripts/inductor_codegen_offline.py", "--case", "tail", "mixer_train",
                           "--tokens", "8192"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = dict(re.findall(r"^codegen case:(\w+) kernels:\d+\n((?:    .*\n)*)", proc.stdout, re.M))
    assert set(cases) == {"cast_then_reshape", "reshape_then_cast", "mixer_train"}, proc.stdout
    for case, listing in cases.items():
        norms = re.findall(r"rsqrt:True stores:(\d+)", listing)
        assert len(norms) == 1 and int(norms[0]) >= 2, (case, listing)


def test_a_token_count_that_is_not_whole_sequences_is_refused():
    proc = subprocess.run([sys.executable, "scripts/inductor_codegen_offline.py", "--tokens", "1000"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--tokens 1000: expected a multiple of 8192" in proc.stderr

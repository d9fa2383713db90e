"""scripts/newton_schulz_bench.py on CPU (both forms eagerly): it must still build a preset's Muon stacks, run both
forms of the iteration on them and find them equal in fp32."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_newton_schulz_bench_runs_on_cpu_and_the_forms_agree():
    proc = subprocess.run([sys.executable, "scripts/newton_schulz_bench.py", "--presets", "gdn_hybrid_lean", "attention",
                           "--ns-steps", "1", "--rounds", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.findall(r"preset:(\w+) device:cpu stacks:(.+) rel_diff_between_forms:(\S+)", proc.stdout)
    stacks = {preset: shapes for preset, shapes, _ in found}
    # lean: q, k, v, o of 8 GDN layers + q and o of 2 attention layers; MLP fc and proj; GQA k and v of 256 rows
    assert stacks == {"gdn_hybrid_lean": "36x512x512 10x1536x512 10x512x1536 4x256x512",
                      "attention": "20x512x512 20x256x512 10x1536x512 10x512x1536"}, proc.stdout
    assert len(found) == 2 and all(float(diff) < 1e-4 for _, _, diff in found), proc.stdout
    for preset in ("gdn_hybrid_lean", "attention"):
        for form in ("baddbmm", "separate_sums"):
            errs = re.search(rf"preset:{preset} form:{form} rel_err_vs_fp32:(\S+)\n", proc.stdout)[1].split(",")
            assert len(errs) == 4 and all(float(e) < 1e-4 for e in errs), proc.stdout  # fp32 on CPU: the same numbers
            assert re.search(rf"preset:{preset} form:{form} ms:[\d.]+ rounds_ms:[\d.]+\n", proc.stdout), proc.stdout
        assert re.search(rf"preset:{preset} saved_ms:-?[\d.]+\n", proc.stdout), proc.stdout


def test_muon_stacks_need_no_compressor_module(monkeypatch):
    """The GPUs' image lacks zstandard (and brotli): building a preset's stacks must not validate export settings (the
    script's first GPU run stopped there, as the default export's compressors were checked)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import importlib.util
    import newton_schulz_bench as nb
    import torch
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("brotli", "zstandard") else real_find_spec(name, *a))
    stacks = nb.muon_stacks("gdn_hybrid_lean", torch.device("cpu"))
    assert [tuple(s.shape) for s in stacks] == [(36, 512, 512), (10, 1536, 512), (10, 512, 1536), (4, 256, 512)]

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
        norms = re.findall(r"rsqrt:True trig:\w+ stores:(\d+)", listing)
        assert len(norms) == 1 and int(norms[0]) >= 2, (case, listing)


def test_the_gated_mixer_backward_walks_the_output_tensors_twice():
    """The anchor's GatedDeltaNet backward (docs/perf.md run ND) has two inductor kernels over [tokens, H * V]: the
    gated norm's backward (one persistent reduction per head row storing do and the gate's gradient) and the sum of
    the two input projections' dx. A reduction over every token for the norm weight's gradient, the third pass the
    unfolded norm had, would be a third."""
    tokens = 8192
    proc = subprocess.run([sys.executable, "scripts/inductor_codegen_offline.py", "--case", "gated_mixer_backward",
                           "--tokens", str(tokens)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listing = re.search(r"^codegen case:gdn_hybrid_mixer_backward kernels:\d+\n((?:    .*\n)*)", proc.stdout, re.M)[1]
    big = re.findall(r"(\w+) rsqrt:\w+ trig:\w+ stores:(\d+) numel:(\d+)", listing)
    big = [(name, int(stores)) for name, stores, numel in big if int(numel) >= tokens * 8 * 64]
    assert len(big) == 2, listing
    assert any(name.startswith("triton_per_") and stores == 2 for name, stores in big), listing


def test_the_attention_block_evaluates_no_cos_or_sin_and_walks_q_and_k_once_each_way():
    """train_gpt's Attention block, SDPA by an opaque stand-in whose gradients are laid out like its inputs (cuDNN's):
    with RoPE's tables from the rope_table op (docs/perf.md run OD) no kernel evaluates cos or sin (traced into the
    graph, inductor fused both into q's and k's kernels in both directions). q's and k's norm + RoPE are one persistent
    reduction each way, storing rstd and the rotated rows forward and only d(qkv)'s slice backward: with q|k|v split by
    columns (the trainer before run PA) the backward stored RoPE's gradient and re-read it in a second kernel, 10
    kernels in all. RoPE runs token-major, so SDPA's output is token-major too and o_proj reads it without a transpose
    copy: 3 forward kernels, 4 before. Tracing runs on the CPU, so the tensors the graph creates have their device
    moved to the fake GPU's."""
    tokens, heads, kv_heads, head_dim = 8192, 8, 4, 64
    proc = subprocess.run([sys.executable, "scripts/inductor_codegen_offline.py", "--case", "attention_block",
                           "--tokens", str(tokens)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cases = dict(re.findall(r"^codegen case:(\w+) kernels:\d+\n((?:    .*\n)*)", proc.stdout, re.M))
    assert set(cases) == {"attention_block_forward", "attention_block_backward"}, proc.stdout
    assert "trig:True" not in proc.stdout, proc.stdout
    q_numel, k_numel = str(tokens * heads * head_dim), str(tokens * kv_heads * head_dim)
    reductions = {part: re.findall(r"triton_per_fused_\d+ rsqrt:(\w+) trig:False stores:(\d+) numel:(\d+)", cases[part])
                  for part in cases}
    want_forward = [("True", "2", n) for n in (q_numel, k_numel)]  # rstd and the rotated rows
    want_backward = [("False", "1", n) for n in (q_numel, k_numel)]  # d(qkv)'s slice only
    assert sorted(reductions["attention_block_forward"]) == sorted(want_forward), proc.stdout
    assert sorted(reductions["attention_block_backward"]) == sorted(want_backward), proc.stdout
    assert cases["attention_block_backward"].count("\n") == 8, proc.stdout
    assert cases["attention_block_forward"].count("\n") == 3, proc.stdout  # the q/k reductions and the weights' cast


def test_newton_schulz_runs_its_sums_inside_the_gemms():
    """Muon's Newton-Schulz (train_gpt.newton_schulz on lean's largest stack, compiled): each of the 5 iterations is
    one bmm and two baddbmm, with no Triton kernel between them; only the normalisation before the loop and the cast
    after it are Triton kernels. The form before (sums written term by term) had 7 pointwise kernels in the loop."""
    proc = subprocess.run([sys.executable, "scripts/inductor_codegen_offline.py", "--case", "newton_schulz"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    listing = re.search(r"^codegen case:newton_schulz kernels:\d+\n((?:    .*\n)*)", proc.stdout, re.M)[1]
    assert re.findall(r"extern:(\w+)", listing) == ["bmm", "baddbmm", "baddbmm"] * 5, listing
    triton = re.findall(r"(triton_\w+) rsqrt", listing)
    assert len(triton) <= 4 and not any("mul" in name for name in triton), listing


def test_a_token_count_that_is_not_whole_sequences_is_refused():
    proc = subprocess.run([sys.executable, "scripts/inductor_codegen_offline.py", "--tokens", "1000"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--tokens 1000: expected a multiple of 8192" in proc.stderr

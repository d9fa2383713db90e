"""scripts/kkt_solve_explore.py's kernel in Triton's CPU interpreter (TRITON_INTERPRET=1, set before Triton is imported,
hence a subprocess) against an fp64 triangular solve per chunk: partial last chunks (down to empty sub-blocks of 16),
head dims 16 and 64, a fast decay, and keys nearly parallel with beta near 1, where every power of a diagonal block
matters (a dropped factor of the inverse's product fails there)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INTERPRETED = r'''
import sys
import torch
sys.path.insert(0, "scripts")
import kkt_solve_explore as ks
torch.manual_seed(0)
for B, T, H, K, decay, spread, beta_min in [(2, 100, 2, 16, 0.3, 1.0, 0.0), (1, 40, 3, 64, 0.3, 1.0, 0.0),
                                             (1, 64, 2, 16, 4.0, 1.0, 0.0), (1, 128, 1, 16, 0.01, 0.05, 0.95)]:
    base = torch.randn(1, 1, H, K)
    k = torch.nn.functional.normalize(base + spread * torch.randn(B, T, H, K), dim=-1)
    beta = beta_min + (1 - beta_min) * torch.rand(B, T, H)
    N = -(-T // 64)
    gate = torch.nn.functional.pad(-torch.rand(B, T, H) * decay, (0, 0, 0, N * 64 - T))
    g = gate.view(B, N, 64, H).cumsum(2).view(B, N * 64, H)[:, :T].contiguous() / 0.6931471805599453  # log2 units
    exact = ks.reference(k, g, beta)
    for inverse in ks.INVERSES:
        out = ks.kkt_solve(k, g, beta, inverse)
        assert out.shape == exact.shape == (B, T, H, 64), (out.shape, exact.shape)
        err = ((out.double() - exact).abs().max() / exact.abs().max()).item()
        # Plain products cancel powers ~6e3 times |A| where keys are nearly parallel: fp32's 6e-8 becomes ~4e-4.
        tolerance = 2e-3 if inverse == "doubling" and spread < 1 else 1e-5
        assert err < tolerance, (B, T, H, K, decay, spread, inverse, err)
        print(B, T, H, K, decay, spread, inverse, f"{err:.1e}")
'''


def test_kkt_solve_kernel_matches_fp64_solve_in_triton_interpreter():
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 12, proc.stdout  # 4 cases x 3 inverses


def test_kkt_solve_kernel_compiles_for_hopper_without_a_gpu():
    """The interpreter runs any Python; the GPU compiler does not. Compile for sm_90 as the lent H100/H200 would, to a
    cubin, each inverse at one of the dot precisions the GPU run compares, so a construct Triton cannot lower fails here."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import triton
    from triton.backends.compiler import GPUTarget
    import kkt_solve_explore as ks
    signature = {"k": "*bf16", "g": "*fp32", "beta": "*fp32", "A": "*bf16", "T": "i32"}
    for inverse, precision in [("substitution", "tf32"), ("refined", "ieee"), ("doubling", "tf32x3")]:
        constants = dict(H=8, K=64, INVERSE=inverse, PRECISION=precision)
        source = triton.compiler.ASTSource(fn=ks.kkt_solve_kernel, signature=dict(signature, **{n: "constexpr" for n in constants}),
                                           constexprs=constants)
        assert triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4)).asm["cubin"]

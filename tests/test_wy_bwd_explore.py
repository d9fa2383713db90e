"""scripts/wy_bwd_explore.py's kernel in Triton's CPU interpreter (TRITON_INTERPRET=1, set before Triton is imported,
hence a subprocess) against torch autograd through the chunk's triangular solve: the gradients of <w, dw> + <u, du>
for k, v, beta and g, with partial last chunks, K != V, and chunk sizes 64 and 16."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INTERPRETED = r'''
import sys
import torch
sys.path.insert(0, "scripts")
import wy_bwd_explore as wy
torch.manual_seed(0)
for B, T, H, K, V, BT in [(2, 100, 2, 32, 16, 64), (1, 40, 3, 16, 32, 16)]:
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
    v, beta, dw, du = torch.randn(B, T, H, V), torch.rand(B, T, H), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    N = -(-T // BT)
    gate = torch.nn.functional.pad(-torch.rand(B, T, H) * 0.3, (0, 0, 0, N * BT - T))
    g = gate.view(B, N, BT, H).cumsum(2).view(B, N * BT, H)[:, :T].contiguous() / 0.6931471805599453  # log2 units
    (A, w, u), exact = wy.reference(k, v, beta, g, dw, du, BT)
    outs = wy.wy_bwd(k, v, beta, g, A.contiguous(), w.contiguous(), u.contiguous(), dw, du)
    for name, out, ref in zip(("dk", "dv", "dbeta", "dg"), outs, exact):
        assert out.shape == ref.shape, (name, out.shape, ref.shape)
        err = ((out - ref).abs().max() / ref.abs().max()).item()
        assert err < 1e-5, (B, T, H, K, V, BT, name, err)
        print(B, T, H, K, V, BT, name, f"{err:.1e}")
'''


def test_wy_bwd_kernel_matches_autograd_in_triton_interpreter():
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 8  # 2 cases x 4 gradients

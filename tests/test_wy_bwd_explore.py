"""scripts/wy_bwd_explore.py's kernel in Triton's CPU interpreter (TRITON_INTERPRET=1, set before Triton is imported,
hence a subprocess) against torch autograd through the chunk's triangular solve: the gradients of <w, dw> + <u, du>
for k, v, beta and g, with partial last chunks, K != V, chunk sizes 64 and 16, a fast decay, whole and in slices of K
and V."""
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
# The third case decays fast, as trained gates can: exp(g_i - g_j) above the diagonal overflows fp32 there.
for B, T, H, K, V, BT, decay in [(2, 100, 2, 32, 16, 64, 0.3), (1, 40, 3, 16, 32, 16, 0.3), (1, 64, 2, 16, 16, 64, 4.0)]:
    k = torch.nn.functional.normalize(torch.randn(B, T, H, K), dim=-1)
    v, beta, dw, du = torch.randn(B, T, H, V), torch.rand(B, T, H), torch.randn(B, T, H, K), torch.randn(B, T, H, V)
    N = -(-T // BT)
    gate = torch.nn.functional.pad(-torch.rand(B, T, H) * decay, (0, 0, 0, N * BT - T))
    g = gate.view(B, N, BT, H).cumsum(2).view(B, N * BT, H)[:, :T].contiguous() / 0.6931471805599453  # log2 units
    (A, w, u), exact = wy.reference(k, v, beta, g, dw, du, BT)
    for split in (0, 16):  # whole, or K and V in slices of 16 (two or more slices of K or of V in each case)
        outs = wy.wy_bwd(k, v, beta, g, A.contiguous(), w.contiguous(), u.contiguous(), dw, du, split=split)
        for name, out, ref in zip(("dk", "dv", "dbeta", "dg"), outs, exact):
            assert out.shape == ref.shape, (name, out.shape, ref.shape)
            err = ((out - ref).abs().max() / ref.abs().max()).item()
            assert err < 1e-5, (B, T, H, K, V, BT, split, name, err)
            print(B, T, H, K, V, BT, split, name, f"{err:.1e}")
'''


def test_wy_bwd_kernel_matches_autograd_in_triton_interpreter():
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("\n") == 24  # 3 cases x 2 kernels x 4 gradients


def test_wy_bwd_kernel_compiles_for_hopper_without_a_gpu():
    """The interpreter runs any Python; the GPU compiler does not. Compile for sm_90 as the lent H100/H200 would, to a
    cubin, so a construct Triton cannot lower fails here rather than on a device."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import triton
    from triton.backends.compiler import GPUTarget
    import wy_bwd_explore as wy
    signature = {n: "*bf16" for n in ("k", "v", "A", "w", "u", "dw", "du", "dk", "dv")}
    signature.update({n: "*fp32" for n in ("beta", "g", "dbeta", "dg")}, T="i32")
    constants = dict(H=8, K=64, V=64, BT=64)
    signature.update({n: "constexpr" for n in constants})
    source = triton.compiler.ASTSource(fn=wy.wy_bwd_kernel, signature=signature, constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
    assert compiled.asm["cubin"] and "wgmma" in compiled.asm["ptx"]  # Hopper's warpgroup MMA for the 64x64 products
    signature.update(BK="constexpr", BV="constexpr")
    source = triton.compiler.ASTSource(fn=wy.wy_bwd_split_kernel, signature=signature, constexprs=dict(constants, BK=32, BV=32))
    assert triton.compile(source, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4)).asm["cubin"]


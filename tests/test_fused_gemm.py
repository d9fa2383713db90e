"""train_gpt's Triton kernels without a GPU: relu2_mm (the MLP's ReLU^2 GEMMs) against torch in Triton's CPU interpreter,
and every kernel as its launcher launches it compiled for an H100 (sm_90) by Triton's own compiler and ptxas, so a kernel
that the GPU's compiler rejects, that needs more shared memory than an H100 has, or that spills registers fails here.
The bf16 runs on the GPU are in tests/test_gpu.py."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

INTERPRETED = r'''
import json, sys, torch
sys.path.insert(0, ".")
import train_gpt as tg
class SMs:  # a few persistent programs, so each walks several tiles
    multi_processor_count = 3
torch.cuda.get_device_properties = lambda *args, **kwargs: SMs()
err = lambda a, b: ((a.double() - b).norm() / b.norm()).item()  # against float64: torch's own fp32 CPU matmul can be off by 1e-4
errors = {}
torch.manual_seed(0)
for M, D, hidden in ((300, 64, 192), (129, 32, 264)):
    x, fc, dy, proj = torch.randn(M, D), torch.randn(hidden, D), torch.randn(M, D), torch.randn(D, hidden)
    c = tg.relu2_mm(x, fc)
    x, fc, dy, proj = x.double(), fc.double(), dy.double(), proj.double()
    errors[f"relu2 forward {M}x{D}x{hidden}"] = err(c, torch.relu(x @ fc.T) ** 2)
    errors[f"relu2 backward {M}x{D}x{hidden}"] = err(tg.relu2_mm(dy.float(), proj.float(), c), (dy @ proj) * 2 * c.double().sqrt())
try:  # an MLP width that TMA cannot load
    tg.relu2_mm(torch.randn(8, 64), torch.randn(100, 64))
    raised = ""
except ValueError as exc:
    raised = str(exc)
print(json.dumps(dict(errors=errors, raised=raised)))
'''


def test_relu2_mm_matches_torch_in_triton_interpreter():
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, TRITON_INTERPRET="1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["errors"]) == 4
    assert not {k: v for k, v in out["errors"].items() if not v < 1e-5}, out["errors"]
    assert "model.fused_mlp=false" in out["raised"]


# Every kernel launch of a training step, recorded from its launcher (not run), then compiled for sm_90 and checked by ptxas
LAUNCHES = r'''
import json, sys, subprocess, tempfile, torch, triton
sys.path.insert(0, ".")
import train_gpt as tg
from triton.backends.compiler import GPUTarget
from triton.backends.nvidia import compiler as nvidia
class SMs:
    multi_processor_count = 132
torch.cuda.get_device_properties = lambda *args, **kwargs: SMs()
launched = []
class Recorder:  # stands in for a @triton.jit kernel: records what its launcher passes instead of running
    def __init__(self, fn):
        self.fn = fn
    def __getitem__(self, grid):
        return lambda *args, **kwargs: launched.append((self.fn, args, kwargs))
for name in ("relu2_mm_kernel", "short_conv_kernel", "short_conv_dx_kernel"):
    setattr(tg, name, Recorder(getattr(tg, name)))
bf16, H, K = torch.bfloat16, 8, 64
tg.relu2_mm(torch.randn(1024, 512, dtype=bf16), torch.randn(1536, 512, dtype=bf16))
c = torch.randn(1024, 1536, dtype=bf16)
tg.relu2_mm(torch.randn(1024, 512, dtype=bf16), torch.randn(512, 1536, dtype=bf16), c)
for W in (4, 0):
    P = torch.randn(4, 256, 3 * H * K, dtype=bf16)
    tg.ShortConv.forward(P, torch.randn(3 * H * K, W, dtype=bf16), None, (H, K, K))
    grads = [torch.randn(4, 256, H, K, dtype=bf16) for _ in range(3)]
    tg.ShortConv.backward(P, torch.randn(3 * H * K, W, dtype=bf16), None, (H, K, K), grads, torch.empty_like(P), False, grads[1])
    P = torch.randn(4, 256, 2 * H * K, dtype=bf16)  # GVA: H / 2 q and k heads over H value heads, whose dq, dk the kernel sums
    tg.ShortConv.backward(P, torch.randn(2 * H * K, W, dtype=bf16), None, (H // 2, K, 2 * K), grads, torch.empty_like(P), False, grads[1])
ptxas = nvidia.get_ptxas(90).path
report = []
for fn, args, kwargs in launched:
    kwargs = dict(kwargs)
    options = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
    signature, constexprs = {}, {}
    for param, value in zip(fn.params, list(args) + [kwargs[p.name] for p in fn.params[len(args):]]):
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", value
        elif isinstance(value, torch.Tensor):
            signature[param.name] = "*" + {torch.bfloat16: "bf16", torch.float32: "fp32"}[value.dtype]
        else:
            signature[param.name] = "i32"
    kernel = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                            target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as f:
        f.write(kernel.asm["ptx"])
        f.flush()
        ptx = subprocess.run([ptxas, "-v", "--gpu-name", "sm_90a", f.name, "-o", "/dev/null"], capture_output=True, text=True)
    spills = [line for line in (ptx.stdout + ptx.stderr).splitlines() if "spill" in line]
    report.append(dict(kernel=fn.__name__, constexprs=constexprs, shared=kernel.metadata.shared,
                       ptxas_rc=ptx.returncode, spills=spills))
print(json.dumps(report))
'''


def test_every_triton_kernel_compiles_for_an_h100():
    """Triton's compiler and ptxas for sm_90, no GPU needed: every launch of a training step compiles (a persistent loop
    that Triton 3.7 fails to flatten is caught here), fits the H100's 227 KiB of shared memory, and spills no more
    registers than measured harmless."""
    triton = pytest.importorskip("triton")
    nvidia = pytest.importorskip("triton.backends.nvidia.compiler")
    if not Path(nvidia.get_ptxas(90).path).exists():
        pytest.skip("this Triton has no ptxas")
    proc = subprocess.run([sys.executable, "-c", LAUNCHES], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    kernels = {(r["kernel"], r["constexprs"].get("BACKWARD")) for r in report}
    assert kernels == {("relu2_mm_kernel", False), ("relu2_mm_kernel", True), ("short_conv_kernel", False),
                       ("short_conv_kernel", True), ("short_conv_dx_kernel", None)}, (triton.__version__, kernels)
    assert sorted(r["constexprs"].get("G") for r in report if r["kernel"] == "short_conv_kernel") == [1, 1, 1, 1, 2, 2]
    for r in report:
        assert r["ptxas_rc"] == 0 and r["shared"] <= 227 * 1024, r
        spilled = sum(int(s.split("bytes spill stores")[0].split(",")[-1]) for s in r["spills"])
        # A register blow-up spills thousands of bytes (the dx kernel at 64 rows and 2 warps: 8,984). The dx kernel
        # spills 572 at its default tiles and is faster there than at the spill-free ones (docs/perf.md run ID).
        assert spilled <= (600 if r["kernel"] == "short_conv_dx_kernel" else 16), r

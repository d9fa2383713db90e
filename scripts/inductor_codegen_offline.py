"""Inductor's Triton kernels for a graph, generated on a machine without a GPU, to see fusion decisions offline.

Inductor is driven with fake CUDA tensors. H100 (sm_90) device properties are patched in, and the generated module is
captured before Triton compiles it. Nothing runs, so this shows which ops inductor fuses into which kernels, not their
speed. Two differences from a GPU: the pattern-matcher passes are off (their setup builds real CUDA tensors), and a
training graph is partitioned on CPU (the autograd engine needs a real CUDA device), then retraced on fake CUDA
tensors.

Cases (docs/perf.md run BD: in the whole compiled lean model, the GDN output norm ran as two kernels, one storing only
rstd and one recomputing the normalised output):
  tail         the output norm + o_proj alone, training-forward shaped (rstd and the o_proj input are outputs), with
               the cast before the reshape (the trainer now) and after it (the trainer before run BD)
  mixer        train_gpt's lean GatedDeltaNet with the real gdn_core_fwd op, inference graph
  mixer_train  the same mixer's training forward (min-cut partitioned on CPU)
  gated_mixer_backward  the anchor's GatedDeltaNet (gdn_hybrid: conv and output gate) training backward (run ND: with
               the norm weight folded into o_proj, the gated norm's backward is one pass storing do and the gate's
               gradient; before, a reduction over every token for the weight's gradient was a pass of its own)
  attention_block  train_gpt's Attention block, training forward and backward, SDPA by an opaque stand-in whose
               gradients are laid out like its inputs, as cuDNN's are (run OD: with RoPE's tables from the rope_table op
               no kernel evaluates cos or sin; run PA: with q|k|v split by heads, q's and k's norm + RoPE backward is
               one pass each into d(qkv); split by columns it stored RoPE's gradient and re-read it)
  newton_schulz  train_gpt.newton_schulz on a stack of matrices, as Muon calls it: its Triton kernels and its GEMM calls
               (thirty-second session: the iteration's sums inside baddbmm, no pointwise kernel in the loop)

Fusion decisions change between torch versions: run it under the GPU's torch for answers about the GPU. A CUDA build
of torch installs and imports here without a driver (e.g. torch==2.11.0 in a separate venv, the lent machines'
version: docs/perf.md run PE; this machine's torch 2.13 fuses the GDN output norm in either order, 2.11 does not).

    python scripts/inductor_codegen_offline.py [--case tail mixer mixer_train ...] [--train-gpt DIR] [--tokens 98304]
For each case it prints one line per kernel: its name, whether it computes an rsqrt, whether it evaluates cos or sin,
its number of stores and the elements it covers at launch.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

H100 = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", major=9, minor=0, multi_processor_count=132,
                             total_memory=80 * 2**30, regs_per_multiprocessor=65536, max_threads_per_multi_processor=2048,
                             warp_size=32, max_threads_per_block=1024, shared_memory_per_block_optin=232448,
                             L2_cache_size=50 * 2**20, gcnArchName="")


class Captured(Exception):
    """Raised in place of loading the generated module: the source is all this script wants."""


def pretend_cuda() -> list[str]:
    """Patch torch so that inductor generates Triton code for an H100 without a GPU; returns the list the generated
    modules' sources are appended to."""
    import torch._inductor.config as inductor_config
    import torch._inductor.fx_passes.joint_graph as joint_graph
    import torch._inductor.graph as graph
    import torch._subclasses.fake_tensor as fake_tensor
    import torch.utils._triton as torch_triton
    from torch._dynamo import device_interface
    from triton.backends.compiler import GPUTarget
    inductor_config.pattern_matcher = False
    joint_graph.lazy_init = lambda *a, **k: None
    fake_tensor.init_gpu_context = lambda device: None  # a CUDA build of torch initialises the (absent) driver here
    fakes = dict(get_device_properties=lambda *a, **k: H100, get_device_capability=lambda *a, **k: (9, 0),
                 is_available=lambda: True, device_count=lambda: 1, current_device=lambda: 0, set_device=lambda *a: None,
                 synchronize=lambda *a: None, get_rng_state=lambda *a, **k: torch.zeros(16, dtype=torch.uint8),
                 set_rng_state=lambda *a, **k: None, _exchange_device=lambda i: 0, _maybe_exchange_device=lambda i: 0)
    for name, fn in fakes.items():
        setattr(torch.cuda, name, fn)
    cuda = device_interface.CudaInterface
    for name, fn in dict(get_device_properties=lambda *a, **k: H100, current_device=lambda: 0, device_count=lambda: 1,
                         set_device=lambda *a: None, exchange_device=lambda i: 0, maybe_exchange_device=lambda i: 0,
                         synchronize=lambda *a: None, is_bf16_supported=lambda *a, **k: True, is_available=lambda: True,
                         get_compute_capability=lambda *a, **k: 90).items():
        setattr(cuda, name, staticmethod(fn))
    cuda.Worker.get_device_properties = staticmethod(lambda *a, **k: H100)
    cuda.Worker.current_device = staticmethod(lambda: 0)
    torch_triton.triton_backend = lambda: __import__("triton").backends.backends["nvidia"].compiler(GPUTarget("cuda", 90, 32))
    torch_triton.triton_hash_with_backend = lambda: "offline"
    sources: list[str] = []

    def capture(self):
        code = self.codegen()
        code = code[0] if isinstance(code, tuple) else code
        sources.append(getattr(code, "value", code))
        raise Captured()
    graph.GraphLowering.compile_to_module = capture
    return sources


def kernels(source: str) -> list[str]:
    """One line per Triton kernel of a generated module: name, rsqrt or not, cos/sin or not, number of stores, and the
    elements it covers at its launch (x numel, times r numel for a reduction)."""
    lines = []
    for name, body in re.findall(r"^(\w+) = async_compile\.triton\('\w+', '''(.*?)'''", source, re.S | re.M):
        launch = re.search(rf"\b{name}\.run\(.*?((?:, \d+)+), stream=", source)
        numel = math.prod(int(n) for n in launch[1].split(", ")[1:]) if launch else 0
        trig = re.search(r"\b(cos|sin)\(", body) is not None
        lines.append(f"{name} rsqrt:{'rsqrt' in body} trig:{trig} stores:{body.count('tl.store(')} numel:{numel}")
    return lines


def generate(gm, inputs, mode, sources: list[str], partitioned: bool = False) -> list[str]:
    """Kernels of gm: compile_fx (decompositions, AOT) for a traced graph, compile_fx_inner for a partitioned one."""
    from torch._inductor.compile_fx import compile_fx, compile_fx_inner
    sources.clear()
    try:
        with mode:
            (compile_fx_inner if partitioned else compile_fx)(gm, inputs)
    except Exception as e:  # inductor wraps Captured in its own error
        if "Captured" not in f"{type(e).__name__} {e}":
            raise
    if not sources:
        raise RuntimeError("inductor generated no module")
    return kernels(sources[-1])


def tail_case(mode, sources, tokens: int) -> dict[str, list[str]]:
    from torch.fx.experimental.proxy_tensor import make_fx
    H, V, D = 8, 64, 512

    def tail(cast_first: bool):
        def f(o, w, proj):
            r = torch.rsqrt(o.float().pow(2).mean(-1, keepdim=True) + 1e-5)
            n = o.float() * r * w
            x = n.to(torch.bfloat16).reshape(tokens, H * V) if cast_first else n.reshape(tokens, H * V).to(torch.bfloat16)
            return F.linear(x, proj.to(torch.bfloat16)), r, x
        return f
    with mode:
        inputs = [torch.empty(tokens, H, V, device="cuda", dtype=torch.bfloat16), torch.empty(V, device="cuda"),
                  torch.empty(D, H * V, device="cuda")]
    out = {}
    for label, cast_first in (("cast_then_reshape", True), ("reshape_then_cast", False)):
        with mode:
            gm = make_fx(tail(cast_first), tracing_mode="fake")(*inputs)
        out[label] = generate(gm, inputs, mode, sources)
    return out


def training_kernels(forward, cpu_inputs: list, mode, sources: list[str], part: str = "forward") -> list[str]:
    """Kernels of forward's training graph, its forward or (part="backward") its backward: traced and min-cut partitioned
    on CPU (the autograd engine needs a real device), then retraced on fake CUDA tensors of the same shapes and
    strides, and generated for the H100."""
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table
    from torch.fx.experimental.proxy_tensor import make_fx
    captured = {}

    def keep(name):
        def compiler(gm, example_inputs):
            captured[name] = gm
            if name == part:
                raise Captured()
            return gm
        return compiler
    traced = make_fx(forward, tracing_mode="fake")(*cpu_inputs)
    try:  # the backward is compiled with the forward, not on its first call: nothing runs
        with torch._functorch.config.patch(force_non_lazy_backward_lowering=True):
            aot_module_simplified(traced, cpu_inputs, fw_compiler=keep("forward"), bw_compiler=keep("backward"),
                                  partition_fn=min_cut_rematerialization_partition,
                                  decompositions=select_decomp_table())(*cpu_inputs)
    except Captured:
        pass
    placeholders = [n.meta["val"] for n in captured[part].graph.nodes if n.op == "placeholder"]
    for node in captured[part].graph.nodes:  # tensors the graph creates (arange, full, ...) were traced on the CPU
        if isinstance(node.kwargs.get("device"), torch.device) and node.kwargs["device"].type == "cpu":
            node.kwargs = {**node.kwargs, "device": torch.device("cuda", 0)}
    captured[part].recompile()
    with mode:
        inputs = [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype, device="cuda") for v in placeholders]
        gm = make_fx(captured[part], tracing_mode="fake")(*inputs)
    return generate(gm, inputs, mode, sources, partitioned=True)


def model_train_case(mode, sources, tokens: int, layout: str) -> dict[str, list[str]]:
    import train_gpt as tg
    cfg = tg.load_config(["model=gdn_hybrid_lean", "export=none", f"model.layout={layout}"])
    model = tg.GPT(cfg.model)
    model.set_kernel("fla")
    names = [n for n, _ in model.named_parameters()]

    def forward(tokens_in, *params):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return (torch.func.functional_call(model, dict(zip(names, params)), (tokens_in, tokens_in)),)
    cpu_inputs = [torch.randint(0, cfg.model.vocab_size, (tokens // 8192, 8192))] + [
        p.detach().clone().requires_grad_() for p in model.parameters()]
    return {f"model_train_{layout}": training_kernels(forward, cpu_inputs, mode, sources)}


def mixer_cases(mode, sources, tokens: int, train: bool, preset: str = "gdn_hybrid_lean", part: str = "forward"):
    import train_gpt as tg
    from torch.fx.experimental.proxy_tensor import make_fx
    cfg = tg.load_config([f"model={preset}", "export=none"])
    mixer = tg.GatedDeltaNet(cfg.model)
    mixer.kernel = "fla"
    names = [n for n, _ in mixer.named_parameters()]
    seqs = max(1, tokens // 8192)

    def forward(x, *params):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return (torch.func.functional_call(mixer, dict(zip(names, params)), (x,))[0],)
    if not train:
        with mode:
            inputs = [torch.empty(seqs, 8192, cfg.model.model_dim, device="cuda", dtype=torch.bfloat16)] + [
                torch.empty(p.shape, device="cuda") for p in mixer.parameters()]
            gm = make_fx(forward, tracing_mode="fake")(*inputs)
        return {"mixer": generate(gm, inputs, mode, sources)}
    cpu_inputs = [torch.randn(seqs, 8192, cfg.model.model_dim, dtype=torch.bfloat16, requires_grad=True)] + [
        p.detach().clone().requires_grad_() for p in mixer.parameters()]
    label = "mixer_train" if preset == "gdn_hybrid_lean" and part == "forward" else f"{preset}_mixer_{part}"
    return {label: training_kernels(forward, cpu_inputs, mode, sources, part)}


def sdpa_stand_in_ops():
    """An opaque stand-in for cuDNN's SDPA in a traced attention block: its backward returns each gradient laid out
    like its input (empty_like, as aten's meta function for cuDNN's backward does), so inductor sees the layouts of
    the GPU graph. The CPU's SDPA returns q's gradient token-major, under which either q|k|v split fuses."""
    lib = "codegen_offline"
    if hasattr(torch.ops, lib) and hasattr(getattr(torch.ops, lib), "sdpa"):
        return getattr(torch.ops, lib).sdpa

    @torch.library.custom_op(f"{lib}::sdpa", mutates_args=())
    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return q.clone()

    @torch.library.custom_op(f"{lib}::sdpa_backward", mutates_args=())
    def sdpa_backward(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
        return [do.clone(), torch.zeros_like(k), torch.zeros_like(v)]
    sdpa.register_fake(lambda q, k, v: torch.empty_like(q))
    sdpa_backward.register_fake(lambda do, q, k, v: [torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)])
    sdpa.register_autograd(lambda ctx, do: tuple(sdpa_backward(do, *ctx.saved_tensors)),
                           setup_context=lambda ctx, inputs, output: ctx.save_for_backward(*inputs))
    return sdpa


def attention_block_case(mode, sources, tokens: int) -> dict[str, list[str]]:
    """train_gpt's Attention block (qkv projection, q/k RMSNorm + RoPE, SDPA by its stand-in, o_proj), training
    forward and backward."""
    import unittest.mock
    import train_gpt as tg
    cfg = tg.load_config(["model=attention", "export=none"]).model
    attn, sdpa = tg.Attention(cfg), sdpa_stand_in_ops()
    names = [n for n, _ in attn.named_parameters()] + ["inv_freq"]

    def forward(x, *tensors):
        with torch.autocast("cuda", dtype=torch.bfloat16), unittest.mock.patch.object(
                tg.F, "scaled_dot_product_attention", lambda q, k, v, **kw: sdpa(q, k, v)):
            return (torch.func.functional_call(attn, dict(zip(names, tensors)), (x,))[0],)
    cpu_inputs = [torch.randn(tokens // 8192, 8192, cfg.model_dim, dtype=torch.bfloat16, requires_grad=True)] + [
        p.detach().clone().requires_grad_() for p in attn.parameters()] + [attn.inv_freq.clone()]
    return {f"attention_block_{part}": training_kernels(forward, cpu_inputs, mode, sources, part)
            for part in ("forward", "backward")}


def newton_schulz_case(mode, sources, steps: int = 5) -> dict[str, list[str]]:
    """train_gpt.newton_schulz on a stack of 36 fp32 512 x 512 matrices (lean's largest Muon group), as Muon calls it:
    its Triton kernels, then one line per GEMM it calls (extern_kernels)."""
    from torch.fx.experimental.proxy_tensor import make_fx
    import train_gpt as tg
    with mode:
        G = torch.empty(36, 512, 512, device="cuda")
        gm = make_fx(lambda G: tg.newton_schulz(G, steps), tracing_mode="fake")(G)
    lines = generate(gm, [G], mode, sources)
    return {"newton_schulz": lines + [f"extern:{call}" for call in re.findall(r"extern_kernels\.(\w+)\(", sources[-1])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", nargs="+", default=["tail", "mixer", "mixer_train"],
                        choices=["tail", "mixer", "mixer_train", "model_train", "gated_mixer_backward",
                                 "attention_block", "newton_schulz"])
    parser.add_argument("--layout", default="GGGG", help="model_train: the lean model's layout")
    parser.add_argument("--train-gpt", default=str(Path(__file__).resolve().parents[1]),
                        help="directory of the train_gpt.py to import (with its conf/), e.g. an older version's copy")
    parser.add_argument("--tokens", type=int, default=98304)
    args = parser.parse_args()
    if args.tokens % 8192:
        parser.error(f"--tokens {args.tokens}: expected a multiple of 8192 (sequences of 8192 tokens)")
    sys.path.insert(0, args.train_gpt)
    from torch._subclasses.fake_tensor import FakeTensorMode
    sources = pretend_cuda()
    mode = FakeTensorMode()
    cases = {"tail": lambda: tail_case(mode, sources, args.tokens),
             "mixer": lambda: mixer_cases(mode, sources, args.tokens, train=False),
             "mixer_train": lambda: mixer_cases(mode, sources, args.tokens, train=True),
             "gated_mixer_backward": lambda: mixer_cases(mode, sources, args.tokens, train=True, preset="gdn_hybrid",
                                                         part="backward"),
             "model_train": lambda: model_train_case(mode, sources, args.tokens, args.layout),
             "attention_block": lambda: attention_block_case(mode, sources, args.tokens),
             "newton_schulz": lambda: newton_schulz_case(mode, sources)}
    results = {}
    for case in args.case:
        results.update(cases[case]())
    for label, lines in results.items():
        print(f"codegen case:{label} kernels:{len(lines)}")
        for line in lines:
            print(f"    {line}")


if __name__ == "__main__":
    main()

"""GPU parity: FLA's Triton kernels against the plain-torch reference path (skipped without CUDA + FLA).

Run on the lent GPU machine:  pytest -q tests/test_gpu.py
"""
import copy

import pytest
import torch

import bench
import train_gpt as tg

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)).item()


KERNELS = ["fla", "fla_function"]  # train_gpt's path (the gdn_core_fwd op), then bench.py's earlier path


def use_kernel(module, kernel: str) -> None:
    """Point a GatedDeltaNet (or every GDN block of a GPT) at an FLA path."""
    import types
    if isinstance(module, tg.GPT):
        module.set_kernel("fla")  # also the fused MLP (model.fused_mlp)
    mixers = [b.mixer for b in module.blocks if b.kind == "G"] if isinstance(module, tg.GPT) else [module]
    for mixer in mixers:
        mixer.kernel = "fla"
        if kernel in bench.CORE_VARIANTS:
            mixer.core = types.MethodType(bench.CORE_VARIANTS[kernel], mixer)


def gdn_pair(kernel: str, seed: int = 0, **overrides):
    pytest.importorskip("fla")
    cfg = tg.ModelConfig(**overrides)
    torch.manual_seed(seed)
    torch_mod = tg.GatedDeltaNet(cfg).cuda()
    torch.nn.init.normal_(torch_mod.o_proj.weight, std=0.02)  # zero-init out projection would hide errors
    fla_mod = copy.deepcopy(torch_mod)
    use_kernel(fla_mod, kernel)
    return torch_mod, fla_mod


@pytest.mark.parametrize("T,with_state,W", [(2048, False, 4), (1000, True, 4), (3, True, 4), (1000, True, 1), (1000, True, 0)])
def test_short_conv_kernel_matches_torch(T, with_state, W):
    """The fused Triton short conv (bf16 in and out, strided input) against the fp32 torch reference: q, k, v and
    the gradients of the input, the conv weight and the carried state (W=1: model.conv_size=1, a state gradient of 0;
    W=0: model.conv_size=0, SiLU only, the input's gradient written by the du pass)."""
    torch.manual_seed(T)
    H, K, V = 8, 64, 64
    D = 2 * H * K + H * V
    x = torch.randn(4, T, D + 24, device="cuda")[..., :D]  # a slice of a wider projection, as in the model
    w, state = torch.randn(D, W, device="cuda") * 0.5, torch.randn(4, D, W, device="cuda") if with_state else None
    grads = [torch.randn(4, T, H, n, device="cuda") for n in (K, K, V)]
    outs = []
    for fused in (False, True):
        xi, wi = x.detach().clone().to(torch.bfloat16 if fused else torch.float32).requires_grad_(), w.clone().requires_grad_()
        si = None if state is None else state.clone().requires_grad_()
        qkv = bench.ShortConvFunction.apply(xi, wi, si, (H, K, V)) if fused else tg.short_conv_qkv(xi, wi, si, (H, K, V))[:3]
        sum((o.float() * g).sum() for o, g in zip(qkv, grads)).backward()
        leaves = [xi, wi] + ([si] if si is not None else [])  # W = 0: the reference never reads w or the state
        outs.append(list(qkv) + [torch.zeros_like(t) if t.grad is None else t.grad for t in leaves])
    for name, fused, ref in zip(["q", "k", "v", "dx", "dw", "dstate"], outs[1], outs[0]):
        assert rel_err(fused, ref) < 1e-2 if ref.abs().sum() > 0 else fused.abs().sum() == 0, name


@pytest.mark.parametrize("with_state,W,HV", [(False, 4, 8), (True, 4, 8), (True, 0, 8), (True, 4, 16)])
def test_gdn_core_op_passes_opcheck(with_state, W, HV):
    """torch.library.opcheck on the forward and backward ops: the fake functions match the real outputs (shapes,
    dtypes, strides), the autograd registration is sound, and AOT compilation (dynamic shapes) matches eager. HV = 16:
    grouped value heads (two per q and k head)."""
    pytest.importorskip("fla")
    torch.manual_seed(3)
    H, K, V, B, T = 8, 64, 64, 2, 200
    D = 2 * H * K + HV * V
    P = (torch.randn(B, T, D + 2 * HV, device="cuda") * 0.5).bfloat16().requires_grad_()
    conv_weight = (torch.randn(D, W, device="cuda") * 0.5).requires_grad_()
    A_log, dt_bias = torch.rand(HV, device="cuda").requires_grad_(), (torch.rand(HV, device="cuda") - 2).requires_grad_()
    conv_state = (torch.randn(B, D, W, device="cuda") * 0.5).bfloat16().requires_grad_() if with_state else None
    S0 = (torch.randn(B, HV, K, V, device="cuda") * 0.1).requires_grad_() if with_state else None
    args = (P, conv_weight, A_log, dt_bias, conv_state, S0, H, K, V, HV, 64, with_state)
    torch.library.opcheck(tg.gdn_core_fwd, args)
    with torch.no_grad():
        saved = tg.gdn_core_fwd(*args)[2:]
    do, dS = torch.randn(B, T, HV, V, device="cuda").bfloat16(), torch.randn(B, HV, K, V, device="cuda") if with_state else None
    kept = [P.detach(), conv_weight.detach(), A_log.detach(), dt_bias.detach(), *saved]
    torch.library.opcheck(tg.gdn_core_bwd, (do, dS, kept, None if conv_state is None else conv_state.detach(),
                                            None if S0 is None else S0.detach(), H, K, V, HV, 64, with_state),
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("T", [2048, 1000, 64])
def test_gdn_module_fla_matches_torch(T, kernel):
    """Same weights, same input: outputs and every parameter gradient agree to bf16 tolerance."""
    ref, fla = gdn_pair(kernel)
    x = torch.randn(4, T, 512, device="cuda")
    y_ref, _ = ref(x)
    y_ref.square().mean().backward()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_fla, _ = fla(x)
    y_fla.float().square().mean().backward()
    assert rel_err(y_fla, y_ref) < 2e-2
    for (name, p_ref), (_, p_fla) in zip(ref.named_parameters(), fla.named_parameters()):
        assert rel_err(p_fla.grad, p_ref.grad) < 5e-2, name


@pytest.mark.parametrize("ablation", [dict(conv_size=1), dict(gdn_output_gate=False), dict(conv_size=0),
                                      dict(conv_size=0, gdn_output_gate=False), dict(gdn_heads=4, gdn_v_heads=8),
                                      dict(gdn_heads=4, gdn_v_heads=8, conv_size=0, gdn_output_gate=False)])
def test_gdn_ablations_fla_matches_torch(ablation):
    """The GDN ablations (model.conv_size=1 or 0, model.gdn_output_gate=false) and grouped value heads (4 q and k heads,
    8 value heads) on the trainer's FLA path: outputs, every parameter gradient, and the carried state between two
    halves, against the torch path."""
    ref, fla = gdn_pair("fla", seed=4, **ablation)
    x = torch.randn(4, 1000, 512, device="cuda")
    y_ref, _ = ref(x)
    y_ref.square().mean().backward()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y_fla, _ = fla(x)
        y_fla.float().square().mean().backward()
        with torch.no_grad():
            f1, t1 = fla(x[:, :300], want_state=True)
            f2, _ = fla(x[:, 300:], state=t1)
    assert rel_err(y_fla, y_ref) < 2e-2 and rel_err(torch.cat([f1, f2], 1), y_ref) < 2e-2
    for (name, p_ref), (_, p_fla) in zip(ref.named_parameters(), fla.named_parameters()):
        assert rel_err(p_fla.grad, p_ref.grad) < 5e-2, name


@pytest.mark.parametrize("kernel", KERNELS)
def test_gdn_state_carry_fla_matches_torch(kernel):
    """Conv and recurrent states in and out (stateful eval, frozen context) agree between kernels, and
    running two halves with the carried state equals one pass over the whole sequence."""
    ref, fla = gdn_pair(kernel, seed=1)
    x = torch.randn(2, 512, 512, device="cuda")
    with torch.no_grad():
        y_full, _ = ref(x)
        y1, s1 = ref(x[:, :300], want_state=True)
        y2, s2 = ref(x[:, 300:], state=s1, want_state=True)
        assert rel_err(torch.cat([y1, y2], 1), y_full) < 1e-4
        with torch.autocast("cuda", dtype=torch.bfloat16):
            f1, t1 = fla(x[:, :300], want_state=True)
            f2, t2 = fla(x[:, 300:], state=t1, want_state=True)
    assert rel_err(torch.cat([f1, f2], 1), y_full) < 2e-2
    for a, b in zip(t2, s2):
        assert rel_err(a, b) < 2e-2


@pytest.mark.parametrize("kernel", KERNELS)
def test_gdn_initial_state_gradient_fla_matches_torch(kernel):
    ref, fla = gdn_pair(kernel, seed=2)
    x = torch.randn(2, 256, 512, device="cuda")
    with torch.no_grad():
        _, state = ref(x[:, :128], want_state=True)
    grads = []
    for mod, ac in ((ref, False), (fla, True)):
        conv, S = state[0].clone().requires_grad_(), state[1].clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=ac):
            y, _ = mod(x[:, 128:], state=(conv, S))
        y.float().square().mean().backward()
        grads.append(S.grad)
    assert rel_err(grads[1], grads[0]) < 5e-2


@pytest.mark.parametrize("M,D,hidden", [(8192, 512, 1536), (1000, 80, 200), (3, 64, 192)])
def test_fused_mlp_matches_torch(M, D, hidden):
    """The Triton ReLU^2 MLP (bf16, TMA tiles partly out of bounds in the odd shapes) against fp32 torch: the output
    and the gradients of the input and both weights."""
    torch.manual_seed(M)
    x, dy = torch.randn(M, D, device="cuda"), torch.randn(M, D, device="cuda")
    fc, proj = torch.randn(hidden, D, device="cuda") * D ** -0.5, torch.randn(D, hidden, device="cuda") * hidden ** -0.5
    outs = []
    for fused in (False, True):
        leaves = [t.detach().clone().to(torch.bfloat16 if fused else torch.float32).requires_grad_() for t in (x, fc, proj)]
        y = tg.relu2_mlp_fwd(*leaves)[0] if fused else torch.relu(leaves[0] @ leaves[1].t()).square() @ leaves[2].t()
        y.backward(dy.to(y.dtype))
        outs.append([y] + [t.grad for t in leaves])
    for name, fused, ref in zip(["y", "dx", "dfc", "dproj"], outs[1], outs[0]):
        assert rel_err(fused, ref) < 1e-2, name
    args = tuple(t.bfloat16().requires_grad_() for t in (x, fc, proj))
    torch.library.opcheck(tg.relu2_mlp_fwd, args)
    with pytest.raises(ValueError, match="model.fused_mlp=false"):
        tg.relu2_mlp_fwd(x[:, :D - 1].bfloat16(), fc[:, :D - 1].bfloat16(), proj[:D - 1].bfloat16())


@pytest.mark.parametrize("preset,kernel,mode", [("gdn_hybrid", "fla", "whole"), ("gdn_hybrid", "fla", "regions"),
                                               ("gdn_hybrid", "fla_function", "regions"), ("attention", "fla", "whole")])
def test_full_model_compiled_fla_matches_eager_torch(preset, kernel, mode):
    """The whole model: compiled (train.compile=whole, the default on CUDA, or regions) + FLA + the fused MLP + bf16 (the training path) against eager torch kernels in fp32."""
    cfg = tg.load_config([f"model={preset}", "export=none"]).model
    torch.manual_seed(0)
    ref = tg.GPT(cfg).cuda()
    for block in ref.blocks:  # give the zero-initialised output projections weight, or the test sees nothing
        torch.nn.init.normal_(block.mixer.o_proj.weight, std=0.02)
        torch.nn.init.normal_(block.mlp.proj.weight, std=0.02)
    fast = copy.deepcopy(ref)
    use_kernel(fast, kernel)
    x = torch.randint(1, 8192, (4, 1024), device="cuda")
    y = torch.randint(1, 8192, (4, 1024), device="cuda")
    loss_ref = ref(x, y)
    loss_ref.backward()
    fast.compile_regions() if mode == "regions" else fast.compile()  # the trainer's two compile paths
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_fast = fast(x, y)
    loss_fast.backward()
    assert abs(loss_fast.item() - loss_ref.item()) < 1e-2 * loss_ref.item()
    for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
        assert rel_err(a.grad, b.grad) < 8e-2, name


def test_muon_with_cuda_graph_newton_schulz_matches_eager():
    """The trainer's Muon on CUDA (Newton-Schulz compiled and replayed as CUDA graphs, one per shape group) against
    Muon with the eager iteration, on the default model's matrices over steps whose gradients change. A graph that
    kept a stale input, or an output overwritten before it was applied, would change the update itself, not its
    rounding."""
    d = tg.Dist(rank=0, world=1, local_rank=0, device=torch.device("cuda"))
    cfg = tg.TrainConfig()
    torch.manual_seed(0)
    model = tg.GPT(tg.ModelConfig()).cuda()
    reference = copy.deepcopy(model)
    graphed = tg.build_optimizers(model, cfg, d)[0]
    matrices = [p for n, p in reference.named_parameters() if tg.param_role(n) == "matrix"]
    eager = tg.Muon(matrices, cfg.matrix_lr, cfg.muon_momentum, cfg.muon_weight_decay, cfg.muon_ns_steps, d, tg.newton_schulz)
    assert [p.shape for p in graphed.param_groups[0]["params"]] == [p.shape for p in matrices]
    start = [p.detach().clone() for p in matrices]
    gen = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(4):
        for a, b in zip(graphed.param_groups[0]["params"], matrices):
            a.grad = torch.randn(a.shape, device="cuda", generator=gen)
            b.grad = a.grad.clone()
        graphed.step()
        eager.step()
    for a, b, p0 in zip(graphed.param_groups[0]["params"], matrices, start):
        assert rel_err(a.detach() - p0, b.detach() - p0) < 2e-2

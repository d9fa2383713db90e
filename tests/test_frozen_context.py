"""frozen_context.py on the CPU: the tiers (frozen context == full forward, checkpointing == plain), the read-only
cache, the gradient split, the W_q context dependence, left padding and the GDN effective attention, for our hybrid
(train_gpt.GPT) and a tiny random-init Hugging Face Qwen3.5."""
import json
import types
import weakref

import pytest
import torch

import frozen_context as fc
from conftest import TINY

CONTEXT, DECISION = 70, 8  # a context that is not a multiple of the GDN chunk (64): chunk boundaries differ
HYBRID_ARGS = ["--arch", "hybrid", *[a for o in TINY if o.startswith("model.") for a in ("--set", o)]]
# Slow-decay GDN init: with Hugging Face's own init nearly every head forgets within a token or two, and the
# delta rule's erase term (what separates the exact effective attention from the decay-only one) barely acts.
QWEN_ARGS = ["--arch", "qwen3_5", "--gdn-decay-init", "mamba"]


class Setup:
    def __init__(self, argv: list[str]):
        self.args = fc.parse_args([*argv, "--context", str(CONTEXT), "--decision", str(DECISION), "--batch", "2",
                                   "--device", "cpu"])
        self.runner, self.meta = fc.build_runner(self.args)
        self.vocab = fc.vocab_size(self.runner)
        self.tokens = fc.sample_tokens(self.args, self.vocab, 0, self.runner.device)
        self.batch = fc.make_batch(self.tokens, CONTEXT)
        self.results = {name: fc.run_tier(self.runner, self.batch, name) for name in fc.TIERS}


@pytest.fixture(scope="module", params=["hybrid", "hybrid_gva", "qwen3_5"])
def setup(request) -> Setup:
    """Our hybrid, our hybrid with grouped value heads (TINY's 2 GDN q and k heads serving 4 value heads: --linear-v-heads
    sets model.gdn_v_heads), and a tiny Qwen3.5 (grouped value heads too)."""
    return Setup({"hybrid": HYBRID_ARGS, "hybrid_gva": HYBRID_ARGS + ["--linear-v-heads", "4"]}.get(request.param, QWEN_ARGS))


@pytest.fixture(scope="module")
def qwen() -> Setup:
    return Setup(QWEN_ARGS)


def test_cpu_runs_the_torch_gdn_kernel(setup):
    assert setup.meta["gdn_kernel"].startswith(("torch", "transformers.")), setup.meta["gdn_kernel"]


def fake_qwen_modeling(bound_to_fla: bool, device_aware: bool, in_module: bool):
    """A modeling module whose GDN wrapper has the closure layout of transformers' hub-kernel fallback: 5.17 binds the
    kernel at import; 5.25 also falls back for devices the package does not support, and sits in an nn.Module (the
    `kernels` package's Func) when `kernels` is installed."""
    def torch_chunk_gated_delta_rule(*args):
        return "torch"
    torch_chunk_gated_delta_rule.__module__ = "transformers.models.qwen3_5.modeling_qwen3_5"

    def chunk_gated_delta_rule(*args):
        return "fla"
    chunk_gated_delta_rule.__module__ = "fla.ops.gated_delta_rule.chunk"
    torch_function, implementation = torch_chunk_gated_delta_rule, (
        chunk_gated_delta_rule if bound_to_fla else torch_chunk_gated_delta_rule)
    supported_devices = ("cuda",) if device_aware and bound_to_fla else None

    def wrapped(*args):
        if supported_devices is not None and args[0].type not in supported_devices:
            return torch_function(*args)
        return implementation(*args)

    func = wrapped

    class Func(torch.nn.Module):
        def forward(self, *args):
            return func(*args)

    return types.SimpleNamespace(torch_chunk_gated_delta_rule=Func() if in_module else wrapped)


@pytest.mark.parametrize("layout", ["5.17", "5.25", "5.25 with kernels"])
@pytest.mark.parametrize("bound_to_fla", [True, False])
def test_gdn_kernel_name_is_the_kernel_that_runs(layout, bound_to_fla):
    modeling = fake_qwen_modeling(bound_to_fla, device_aware=layout != "5.17", in_module=layout.endswith("kernels"))
    for device in (torch.device("cpu"), torch.device("cuda")):
        ran = modeling.torch_chunk_gated_delta_rule(device)
        name = fc.gdn_kernel_name(modeling, device)
        assert name.startswith({"fla": "fla.", "torch": "transformers."}[ran]), (layout, device, name)


def test_frozen_logits_match_full_forward(setup):
    full, frozen = setup.results["full"], setup.results["frozen"]
    assert frozen.logits.shape == (2, DECISION, setup.vocab)
    assert (frozen.logits - full.logits).abs().max() <= 1e-4 * full.logits.abs().max()
    assert abs(frozen.loss - full.loss) < 1e-5


@pytest.mark.parametrize("tier", ["frozen", "frozen_ckpt"])
def test_frozen_steps_repeat_exactly_and_leave_the_state_untouched(setup, tier):
    result = setup.results[tier]
    assert result.state_issues == 0  # nothing computed from the context requires or received a gradient
    assert result.state_unchanged  # bit-identical after two forward/backward steps
    assert result.repeat_max_rel == 0.0


@pytest.mark.parametrize("plain,ckpt", [("full", "full_ckpt"), ("frozen", "frozen_ckpt")])
def test_checkpointed_grads_match(setup, plain, ckpt):
    assert fc.grad_difference(setup.results[ckpt].grads, setup.results[plain].grads)["max_rel"] <= 1e-5


def test_freezing_drops_the_gradient_through_the_context(setup):
    through = fc.through_context(setup.runner, setup.results["full"], setup.results["frozen"])
    assert through["gdn"] > 1e-3 and through["attn"] > 1e-3  # both mixer types carry gradient through the context


def test_split_sums_to_one_and_matches_p_grad(setup):
    runner, split = setup.runner, setup.results["full"].split
    assert sum(split["type"].values()) == pytest.approx(1.0, abs=1e-9)
    assert sum(split["group"].values()) == pytest.approx(1.0, abs=1e-9)
    runner.model.zero_grad(set_to_none=True)
    fc.train_step(runner, setup.batch, None, False)
    direct = {}
    for name, p in runner.model.named_parameters():
        kind = runner.categorize(name.replace("model.layers.", "blocks.", 1))[0]
        direct[kind] = direct.get(kind, 0.0) + p.grad.double().pow(2).sum().item()
    total = sum(direct.values())
    runner.model.zero_grad(set_to_none=True)
    assert split["total_norm"] == pytest.approx(total ** 0.5, rel=1e-6)
    for kind, sq in direct.items():
        assert split["type"][kind] == pytest.approx(sq / total, rel=1e-6, abs=1e-12), kind
    mixers = setup.results["full"].mixers
    assert sum(mixers["by_layer"].values()) == pytest.approx(1.0)
    assert mixers["gdn_share"] == pytest.approx(sum(v for k, v in mixers["by_layer"].items() if k.endswith("gdn")))


def test_attention_wq_gradient_depends_on_the_frozen_context(setup):
    frozen = setup.results["frozen"]
    same = fc.context_dependence(setup.runner, setup.batch, frozen, setup.batch.context)
    other_context = fc.sample_tokens(setup.args, setup.vocab, 1, setup.runner.device)[:, :CONTEXT]
    other = fc.context_dependence(setup.runner, setup.batch, frozen, other_context)
    assert same["attn"] == 0.0  # control: the same context reproduces the gradient exactly
    assert other["attn"] > 0.05 and other["gdn"] > 0.05


def test_effective_attention_exact_reproduces_the_layer_and_decay_only_does_not(setup):
    calls = fc.capture_gdn_calls(setup.runner, setup.tokens[:1, :48])
    assert [c.index for c in calls] == [i for i, _ in setup.runner.gdn_modules()]
    for call in calls:
        report = fc.layer_effective_attention(setup.runner, call, topk=4)
        assert report["exact_vs_recurrence"]["max"] < 1e-5
        assert report["exact_output_vs_layer"] < 1e-5  # through gate / norm / out_proj == the layer's own output
        assert report["decay_vs_recurrence"]["mean"] > 0.02  # clearly larger: >1000x the exact M's error


def delta_rule_by_token(q, k, v, g, beta, scale, erase: bool):
    """One head, token by token: S_t = exp(g_t)(I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T (without the erase term
    if not erase), o_t = scale S_t^T q_t."""
    S, out = torch.zeros(k.shape[1], v.shape[1], dtype=torch.float64), []
    for t in range(q.shape[0]):
        S = g[t].exp() * S
        if erase:
            S = S - beta[t] * torch.outer(k[t], k[t] @ S)
        S = S + beta[t] * torch.outer(k[t], v[t])
        out.append(scale * q[t] @ S)
    return torch.stack(out)


def test_effective_attention_formulas_against_the_token_recurrence():
    gen = torch.Generator().manual_seed(0)
    T, K, V = 40, 8, 5
    q, k = (torch.nn.functional.normalize(torch.randn(1, T, 1, K, generator=gen, dtype=torch.float64), dim=-1)
            for _ in range(2))
    v = torch.randn(T, V, generator=gen, dtype=torch.float64)
    g = -0.1 * torch.rand(1, T, 1, generator=gen, dtype=torch.float64)
    beta = torch.rand(1, T, 1, generator=gen, dtype=torch.float64)
    args = (q[0, :, 0], k[0, :, 0], v, g[0, :, 0], beta[0, :, 0], 0.4)
    exact = fc.effective_attention(q, k, g, beta, 0.4)[0, 0]
    decay_only = fc.decay_only_attention(q, k, g, beta, 0.4)[0, 0]
    assert torch.allclose(exact @ v, delta_rule_by_token(*args, erase=True), atol=1e-12)
    assert torch.allclose(decay_only @ v, delta_rule_by_token(*args, erase=False), atol=1e-12)
    assert (exact - decay_only).abs().max() > 1e-2  # the erase term matters with slow decay
    assert torch.equal(exact.triu(1), torch.zeros_like(exact))  # causal


def test_qwen_left_padding_matches_each_context_alone(qwen):
    assert fc.left_padding_difference(qwen.runner, qwen.batch) < 1e-5


def test_qwen_one_token_decision_is_rejected(qwen):
    one = fc.make_batch(qwen.tokens[:, :CONTEXT + 2], CONTEXT)
    with torch.no_grad(), pytest.raises(ValueError, match="decision length >= 2"):
        qwen.runner.decision_logits(one, qwen.runner.context_state(one))


def test_qwen_plain_cache_cannot_serve_repeated_frozen_steps(qwen):
    """Why the read-only cache exists: with transformers' own cache, backward fails or the context state changes."""
    from transformers import DynamicCache
    runner, batch = qwen.runner, qwen.batch
    cache = DynamicCache(config=runner.model.config)
    with torch.no_grad():
        runner.model(input_ids=batch.context, use_cache=True, logits_to_keep=1, **{runner.cache_kwarg: cache})
    before = [t.clone() for t in fc.cache_tensors(cache)]
    try:
        logits = runner.model(input_ids=batch.decision, use_cache=True, **{runner.cache_kwarg: cache}).logits
        logits.float().logsumexp(-1).mean().backward()
        failed = False
    except RuntimeError:
        failed = True
    runner.model.zero_grad(set_to_none=True)
    after = fc.cache_tensors(cache)
    assert failed or len(after) != len(before) or not all(torch.equal(a, b) for a, b in zip(after, before))


def test_cli_on_a_saved_qwen_checkpoint(qwen, tmp_path):
    qwen.runner.model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "report.json"
    report = fc.main(["--arch", "qwen3_5", "--model", str(tmp_path / "ckpt"), "--device", "cpu", "--context", "40",
                      "--decision", "4", "--warmup", "0", "--repeats", "1", "--ea-length", "24", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["checks"] == report["checks"] and all(c["passed"] for c in saved["checks"].values())
    assert set(saved["tiers"]) == set(fc.TIERS) and saved["tiers"]["frozen"]["peak_mib"] is None
    assert len(saved["effective_attention"]["layers"]) == 3


# ----------------------------------------------------------------------------------------------------
# Checkpointing, gradient groups, peak-memory windows, bad input.

@pytest.mark.parametrize("tier", list(fc.TIERS))
def test_checkpointed_tiers_recompute_every_layer(setup, tier):
    """Checkpointed and plain gradients are bit-identical on a CPU, so only the call count shows checkpointing is on:
    with it every layer's forward runs again in backward. Counted on each layer's MLP (the layer's own forward is
    the checkpointed function, called directly), with grad enabled only: the no_grad prefill does not count."""
    runner, calls = setup.runner, []

    def count(module, args):
        if torch.is_grad_enabled():
            calls.append(module)

    handles = [layer.mlp.register_forward_pre_hook(count) for layer in runner.layers()]
    try:
        fc.run_tier(runner, setup.batch, tier)
    finally:
        for handle in handles:
            handle.remove()
    steps = 2 if tier.startswith("frozen") else 1
    per_step = 2 if tier.endswith("_ckpt") else 1
    assert [calls.count(layer.mlp) for layer in runner.layers()] == [steps * per_step] * len(runner.layers())


# (block type, group) per parameter, written out from the parameter names. Hybrid (train_gpt.GPT): keyed by the
# layer's letter in the layout and the name after "blocks.<i>."; Hugging Face Qwen3.5: keyed by the name after
# "blocks.<i>." (self_attn.q_proj is split into its query and output-gate rows, linear_attn.in_proj_qkv into its
# query, key and value rows, so both models report the GDN groups q, k and v).
HYBRID_GROUPS = {
    ("G", "mixer.q_proj.weight"): ("gdn", "q"), ("G", "mixer.k_proj.weight"): ("gdn", "k"),
    ("G", "mixer.v_proj.weight"): ("gdn", "v"), ("G", "mixer.q_conv"): ("gdn", "conv"),
    ("G", "mixer.k_conv"): ("gdn", "conv"), ("G", "mixer.v_conv"): ("gdn", "conv"),
    ("G", "mixer.g_proj.weight"): ("gdn", "z"), ("G", "mixer.a_proj.weight"): ("gdn", "a"),
    ("G", "mixer.b_proj.weight"): ("gdn", "b"), ("G", "mixer.A_log"): ("gdn", "A_log"),
    ("G", "mixer.dt_bias"): ("gdn", "dt_bias"), ("G", "mixer.norm_weight"): ("gdn", "norm"),
    ("G", "mixer.o_proj.weight"): ("gdn", "out"),
    ("A", "mixer.q_proj.weight"): ("attn", "q"), ("A", "mixer.k_proj.weight"): ("attn", "k"),
    ("A", "mixer.v_proj.weight"): ("attn", "v"), ("A", "mixer.o_proj.weight"): ("attn", "o"),
    ("G", "mlp.fc.weight"): ("mlp", "mlp"), ("G", "mlp.proj.weight"): ("mlp", "mlp"),
    ("A", "mlp.fc.weight"): ("mlp", "mlp"), ("A", "mlp.proj.weight"): ("mlp", "mlp"),
    (None, "embed.weight"): ("embed", "embed"), (None, "skip_weights"): ("skip", "skip"),
}
QWEN_GROUPS = {
    "linear_attn.in_proj_qkv.weight:q": ("gdn", "q"), "linear_attn.in_proj_qkv.weight:k": ("gdn", "k"),
    "linear_attn.in_proj_qkv.weight:v": ("gdn", "v"), "linear_attn.in_proj_z.weight": ("gdn", "z"),
    "linear_attn.in_proj_b.weight": ("gdn", "b"), "linear_attn.in_proj_a.weight": ("gdn", "a"),
    "linear_attn.conv1d.weight": ("gdn", "conv"), "linear_attn.dt_bias": ("gdn", "dt_bias"),
    "linear_attn.A_log": ("gdn", "A_log"), "linear_attn.norm.weight": ("gdn", "norm"),
    "linear_attn.out_proj.weight": ("gdn", "out"),
    "self_attn.q_proj.weight:query": ("attn", "q"), "self_attn.q_proj.weight:gate": ("attn", "gate"),
    "self_attn.k_proj.weight": ("attn", "k"), "self_attn.v_proj.weight": ("attn", "v"),
    "self_attn.o_proj.weight": ("attn", "o"), "self_attn.q_norm.weight": ("attn", "qk_norm"),
    "self_attn.k_norm.weight": ("attn", "qk_norm"),
    "mlp.gate_proj.weight": ("mlp", "mlp"), "mlp.up_proj.weight": ("mlp", "mlp"), "mlp.down_proj.weight": ("mlp", "mlp"),
    "input_layernorm.weight": ("norm", "norm"), "post_attention_layernorm.weight": ("norm", "norm"),
    "model.embed_tokens.weight": ("embed", "embed"), "lm_head.weight": ("embed", "embed"),
    "model.norm.weight": ("norm", "norm"),
}


def expected_group(runner, name: str) -> tuple[str, str]:
    parts = name.split(".", 2)
    if runner.arch == "hybrid":
        return HYBRID_GROUPS[(runner.layout[int(parts[1])], parts[2]) if parts[0] == "blocks" else (None, name)]
    return QWEN_GROUPS[parts[2] if parts[0] == "blocks" else name]


def test_every_parameter_lands_in_its_group(setup):
    runner = setup.runner
    entries = runner.split_entries({n: p.detach() for n, p in runner.model.named_parameters()})
    expected = {name: expected_group(runner, name) for name, _ in entries}
    assert {name: runner.categorize(name) for name, _ in entries} == expected
    assert {kind for kind, _ in expected.values()} >= {"gdn", "attn", "mlp", "embed"}  # both mixer types covered
    split = fc.tg.split_gradient(entries, runner.categorize)
    assert set(split["group"]) == {f"{kind}.{group}" for kind, group in expected.values()}


def test_qwen_gdn_in_proj_qkv_splits_into_q_k_v_rows(qwen):
    """The fused GDN in_proj_qkv emits [query (key_dim) | key (key_dim) | value (value_dim)] rows (the Hugging Face
    layer splits it so after the conv): split_entries reports each part as its own entry and group, and the parts
    hold exactly the rows and the squared norm of the whole gradient."""
    runner, grads = qwen.runner, qwen.results["full"].grads
    config = runner.model.config
    key_dim = config.linear_num_key_heads * config.linear_key_head_dim
    value_dim = config.linear_num_value_heads * config.linear_value_head_dim
    assert key_dim != value_dim  # grouped value heads: a wrong row count in any part would show
    entries = dict(runner.split_entries(grads))
    fused = {n.replace("model.layers.", "blocks.", 1): g for n, g in grads.items()
             if n.endswith("linear_attn.in_proj_qkv.weight")}
    assert fused and len(fused) == len(runner.gdn_modules())
    for name, g in fused.items():
        assert g.shape[0] == 2 * key_dim + value_dim
        assert name not in entries
        parts = {part: entries[f"{name}:{part}"] for part in "qkv"}
        assert torch.equal(parts["q"], g[:key_dim])
        assert torch.equal(parts["k"], g[key_dim:2 * key_dim])
        assert torch.equal(parts["v"], g[2 * key_dim:])
        assert sum(p.double().pow(2).sum().item() for p in parts.values()) == pytest.approx(
            g.double().pow(2).sum().item(), rel=1e-12)
        assert {part: runner.categorize(f"{name}:{part}") for part in "qkv"} == {p: ("gdn", p) for p in "qkv"}
    # the query rows are also the GDN W_q that the context-dependence check compares
    assert torch.equal(runner.query_grads(grads)["gdn"], torch.cat([entries[f"{n}:q"].flatten() for n in fused]))
    groups = qwen.results["full"].split["group"]
    assert {"gdn.q", "gdn.k", "gdn.v"} <= set(groups) and "gdn.qkv" not in groups
    assert all(groups[f"gdn.{p}"] > 0 for p in "qkv")


def test_qwen_attention_gate_rows_are_the_gate(qwen):
    """q_proj emits query and output gate interleaved per head. The query passes through q_norm (an RMSNorm), so
    scaling the query rows leaves the attention output unchanged; scaling the gate rows changes it. The rows are the
    ones split_entries (gradient split) and query_grads (W_q context dependence) take as query and gate."""
    runner = qwen.runner
    index, attn = next((i, layer.self_attn) for i, layer in enumerate(runner.layers()) if hasattr(layer, "self_attn"))
    name = f"model.layers.{index}.self_attn.q_proj.weight"
    weight = attn.q_proj.weight
    row_ids = torch.arange(weight.shape[0], dtype=torch.float64)[:, None].expand_as(weight).contiguous()
    halves = dict(runner.split_entries({name: row_ids}))
    rows = {part: halves[f"blocks.{index}.self_attn.q_proj.weight:{part}"].reshape(-1, weight.shape[1])[:, 0].long()
            for part in ("query", "gate")}
    assert torch.equal(runner.query_grads({name: row_ids})["attn"].view(-1, weight.shape[1])[:, 0].long(),
                       rows["query"])
    assert sorted((rows["query"].tolist() + rows["gate"].tolist())) == list(range(weight.shape[0]))

    outputs = []
    hook = attn.register_forward_hook(lambda mod, args, out: outputs.append(out[0].detach().clone()))
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            for part in (None, "query", "gate"):
                weight.copy_(original)
                if part:
                    weight[rows[part]] *= 3.0
                runner.plain_forward(qwen.tokens[:, :24])
    finally:
        hook.remove()
        with torch.no_grad():
            weight.copy_(original)
    plain, query_scaled, gate_scaled = outputs
    assert fc.relative_error(query_scaled, plain) < 1e-3
    assert fc.relative_error(gate_scaled, plain) > 1e-2


def test_peak_memory_windows_hold_only_the_training_steps(setup, monkeypatch):
    """CUDA peaks cannot be read on a CPU: fake the window functions and log the order of events. Every timed step
    lies inside a window, no gradient copy does, and no step starts while an earlier step's outputs are alive."""
    events, outputs = [], []
    real_step, real_collect = fc.train_step, fc.collect_grads

    def step(*args):
        events.append(("step", sum(ref() is not None for ref in outputs)))
        loss, logits = real_step(*args)
        outputs.extend([weakref.ref(loss), weakref.ref(logits)])
        return loss, logits

    def collect(model):
        events.append(("collect", None))
        return real_collect(model)

    monkeypatch.setattr(fc, "train_step", step)
    monkeypatch.setattr(fc, "collect_grads", collect)
    monkeypatch.setattr(fc, "reset_peak", lambda device: events.append(("reset", None)) or 0)
    monkeypatch.setattr(fc, "peak_mib", lambda device, base: events.append(("peak", None)) or (len(events), 0.0))
    result = fc.run_tier(setup.runner, setup.batch, "frozen", warmup=2, repeats=3)
    inside, steps_in_windows = False, 0
    for kind, alive in events:
        assert kind != "collect" or not inside, events
        if kind == "step":
            assert alive == 0, events  # earlier losses / logits released before the step
            steps_in_windows += inside
        inside = {"reset": True, "peak": False}.get(kind, inside)
    assert steps_in_windows == 5 and [kind for kind, _ in events].count("collect") == 2
    peaks = [i + 1 for i, (kind, _) in enumerate(events) if kind == "peak"]
    assert result.peak_mib == max(peaks[-3:])  # the largest peak of the timed steps (the last 3)


def test_hybrid_without_attention_reports_the_wq_check_as_na(capsys):
    report = fc.main([*HYBRID_ARGS, "tiers", "--layers", "3", "--full-attn-every", "4", "--context", "20",
                      "--decision", "4", "--device", "cpu", "--warmup", "0", "--repeats", "1"])
    assert report["model"]["layout"] == "GGG"
    wq = report["checks"]["attn_wq_depends_on_context"]
    assert wq["passed"] is None and wq["value"] is None
    assert fc.exit_status(report) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if "attn_wq_depends_on_context" in line)
    assert line.split()[-1] == "n/a"
    report["checks"]["frozen_state_unchanged"]["passed"] = False
    assert fc.exit_status(report) == 1


def test_qwen_without_full_attention_is_rejected_before_any_tier(monkeypatch):
    monkeypatch.setattr(fc, "run_tier", lambda *a, **k: pytest.fail("a tier ran"))
    with pytest.raises(ValueError, match=r"--arch qwen3_5 with --layers 3 --full-attn-every 4 has no full_attention"):
        fc.main([*QWEN_ARGS, "--layers", "3", "--device", "cpu", "--context", "20", "--decision", "4"])
    # The effective attention needs no cache: that mode still runs.
    report = fc.main([*QWEN_ARGS, "effective-attention", "--layers", "3", "--device", "cpu", "--context", "20",
                      "--decision", "4", "--ea-length", "16"])
    assert len(report["effective_attention"]["layers"]) == 3


@pytest.mark.parametrize("size", [[], ["--hidden", "112"], ["--set", "model.model_dim=112"]])
def test_hybrid_intermediate_sets_the_mlp_width(size):
    """--intermediate is the MLP width whatever sets the model width (preset, --hidden or --set model.model_dim);
    230 / 112 is one of the ratios whose float product truncates to one less."""
    tiny = [a for o in TINY if o.startswith("model.") and "model_dim" not in o for a in ("--set", o)]
    args = fc.parse_args(["--arch", "hybrid", *tiny, *size, "--intermediate", "230", "--layers", "2", "--device", "cpu"])
    runner, _ = fc.build_runner(args)
    width = 112 if size else fc.tg.ModelConfig.model_dim
    assert all(layer.mlp.fc.weight.shape == (230, width) for layer in runner.layers())


@pytest.mark.parametrize("argv,message", [
    (["--warmup", "-1"], "--warmup -1: expected an integer >= 0"),
    (["--full-attn-every", "0"], "--full-attn-every 0: expected an integer >= 1"),
    (["--context", "0"], "--context 0: expected an integer >= 1"),
    (["--decision", "0"], "--decision 0: expected an integer >= 1"),
    (["--repeats", "0"], "--repeats 0: expected an integer >= 1"),
    (["--batch", "0"], "--batch 0: expected an integer >= 1"),
    (["--arch", "qwen3_5", "--decision", "1"], "--decision 1: expected an integer >= 2 for --arch qwen3_5"),
    (["--arch", "qwen3_5", "--set", "foo"], "--set 'foo': expected KEY=VALUE"),
    (["--set", "model.mlp_mult=2", "--intermediate", "100"], "drop one of --intermediate and --set model.mlp_mult"),
])
def test_bad_cli_input_is_rejected_up_front(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        fc.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_qwen_one_token_decision_is_fine_for_the_effective_attention_alone():
    assert fc.parse_args(["effective-attention", "--arch", "qwen3_5", "--decision", "1"]).decision == 1


@pytest.mark.parametrize("conv_size", [1, 0])
def test_hybrid_gdn_ablations_run_every_tier_and_the_effective_attention(conv_size):
    """model.gdn_output_gate=false and model.conv_size=1 or 0 on the hybrid: the frozen tier still matches the full one,
    the exact effective attention still reproduces each GDN layer's output (no gate term), and no z group appears
    (nor a conv group without the conv)."""
    ablated = Setup(HYBRID_ARGS + ["--set", "model.gdn_output_gate=false", "--set", f"model.conv_size={conv_size}"])
    assert all(m.g_proj is None and m.conv_weight().shape[1] == conv_size for _, m in ablated.runner.gdn_modules())
    full, frozen = ablated.results["full"], ablated.results["frozen"]
    assert (frozen.logits - full.logits).abs().max() <= 1e-4 * full.logits.abs().max()
    groups = full.split["group"]
    assert "gdn.z" not in groups and groups["gdn.q"] > 0 and (groups["gdn.conv"] > 0 if conv_size else "gdn.conv" not in groups)
    for call in fc.capture_gdn_calls(ablated.runner, ablated.tokens[:1, :48]):
        assert fc.layer_effective_attention(ablated.runner, call, topk=4)["exact_output_vs_layer"] < 1e-5

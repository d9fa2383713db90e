"""frozen_context.py: where does the gradient go when the context runs under no_grad and only the decision
tokens are trained, in a hybrid of Gated DeltaNet (GDN) and softmax-attention layers?

Three tiers on one model and one batch, plus tier 2 with checkpointing (loss on the decision tokens only):
  full         forward + backward over context + decision
  frozen       the context's state (GDN conv + recurrent state, attention KV) computed under torch.no_grad(), then
               forward + backward over the decision tokens only, starting from that state
  full_ckpt    tier 1 with activation checkpointing per layer (same math, less memory)
  frozen_ckpt  tier 2 with activation checkpointing per layer (the read-only cache makes the recompute exact)
For each tier: loss, the gradient split (train_gpt.split_gradient: shares of the squared gradient norm by block
type and GDN/attention parameter group; Qwen3.5's fused GDN in_proj_qkv is split by rows into the groups q, k and v,
and the attention q_proj into q and gate, as the hybrid's separate projections are), peak memory and step time;
then checks that are part of the result: frozen logits == full logits, checkpointed grads == plain grads, the
frozen state is detached and unchanged, and the attention W_q gradient still depends on the (frozen) context keys.

The effective attention of a GDN layer, M[i, j] = contribution of value input j to output i (per head, before
the output gate / norm), exact and in its decay-only approximation, is checked against the layer's recurrence.

Models: our hybrid (train_gpt.GPT) or Hugging Face Qwen3_5ForCausalLM (tiny random-init by default, or a local
checkpoint with --model; never a download).

Usage:
  python frozen_context.py --arch hybrid --context 512 --decision 64 --batch 2 --out hybrid.json
  python frozen_context.py --arch qwen3_5 --device cuda --dtype bf16 --layers 24 --hidden 2048 --intermediate 6144 \
      --heads 8 --kv-heads 2 --head-dim 256 --linear-heads 16 --linear-v-heads 16 --linear-head-dim 128 \
      --vocab 248320 --context 4096 --decision 256 --out qwen.json
  python frozen_context.py effective-attention --arch qwen3_5 --model /path/to/checkpoint --ea-length 256
Exit status 1 when a check fails.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.metadata
import inspect
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import train_gpt as tg

TIERS = {"full": (False, False), "frozen": (True, False), "full_ckpt": (False, True), "frozen_ckpt": (True, True)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
QWEN_MODELING = "transformers.models.qwen3_5.modeling_qwen3_5"
# The tiny random-init Qwen3.5 used when no size flags are given: runs on a CPU in seconds, has grouped value heads
# (4 value heads over 2 key heads) and the default layer pattern (every 4th layer full attention).
TINY_QWEN = dict(layers=4, hidden=64, intermediate=128, heads=4, kv_heads=2, head_dim=16, linear_heads=2,
                 linear_v_heads=4, linear_head_dim=16, vocab=256)
# in_proj_qkv's rows are split by split_entries into <name>:q, :k and :v (groups "q", "k", "v"); "qkv" is its group
# only under the unsplit name, as q_proj's is "q" before its gate rows are split off.
QWEN_GDN_GROUPS = {"in_proj_qkv": "qkv", "in_proj_z": "z", "in_proj_a": "a", "in_proj_b": "b", "conv1d": "conv",
                   "A_log": "A_log", "dt_bias": "dt_bias", "norm": "norm", "out_proj": "out"}
QWEN_ATTN_GROUPS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "q_norm": "qk_norm",
                    "k_norm": "qk_norm"}
WQ_MIN_DEPENDENCE = 1e-3  # relative W_q gradient change under a different context that counts as "clearly > 0"


def tolerance(kind: str, device: torch.device, dtype: torch.dtype) -> float:
    """Relative tolerance of an equality check. On CUDA the FLA Triton kernels use TF32 dots even for fp32 inputs,
    and bf16 compute leaves ~3 significant digits, so both get looser bounds than fp32 on the CPU."""
    if dtype == torch.bfloat16:
        return 5e-2
    return {"logits": 1e-4, "grads": 1e-4, "output": 1e-4}[kind] * (100 if device.type == "cuda" else 1)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64."""
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def progress(message: str) -> None:
    """Progress on stderr (first calls of the Triton kernels compile and autotune for minutes on a new shape)."""
    print(f"[frozen_context {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def check(value: float | None, tol: float, passed: bool | None, what: str) -> dict:
    """passed None: not applicable to this model (reported as n/a, not a failure)."""
    return dict(value=value, tol=tol, passed=None if passed is None else bool(passed), what=what)


# ----------------------------------------------------------------------------------------------------
# BATCH: context + decision tokens; the context may be left-padded (mask 0 = padding).

@dataclass
class Batch:
    context: torch.Tensor        # [B, P] token ids
    context_mask: torch.Tensor   # [B, P] 1 = real token, 0 = left padding
    decision: torch.Tensor       # [B, T] decision input tokens (follow the context)
    targets: torch.Tensor        # [B, T] next-token targets of the decision tokens

    @property
    def padded(self) -> bool:
        return not bool(self.context_mask.all())


def make_batch(tokens: torch.Tensor, context: int) -> Batch:
    """tokens [B, P + T + 1]: the first P are the context, the next T the decision inputs, shifted by one the
    targets."""
    ctx = tokens[:, :context]
    return Batch(ctx, torch.ones_like(ctx), tokens[:, context:-1], tokens[:, context + 1:])


def sample_tokens(args, vocab: int, seed: int, device: torch.device) -> torch.Tensor:
    """[B, P + T + 1] tokens: consecutive windows of the --tokens shards, or uniform random ids."""
    n = args.context + args.decision + 1
    if args.tokens:
        stream = tg.TokenStream(args.tokens)
        rows = np.stack([stream.read((seed * args.batch + r) * n, n) for r in range(args.batch)])  # disjoint windows
        if rows.max() >= vocab:
            raise ValueError(f"--tokens holds id {rows.max()} >= the model's vocabulary ({vocab})")
        return torch.from_numpy(rows).to(device)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (args.batch, n), generator=gen).to(device)


# ----------------------------------------------------------------------------------------------------
# CHECKPOINTING: our own per-layer wrapper. Hugging Face's gradient checkpointing drops the cache (it sets
# past_key_values=None inside checkpointed layers, in 5.17 and 5.23 alike); with the read-only cache below the
# recompute in backward reads the same, unchanged context state, so checkpointing and the cache work together.

@contextlib.contextmanager
def checkpointed(layers: list[nn.Module]):
    """Recompute each layer's forward during backward (non-reentrant torch.utils.checkpoint: keyword arguments
    and non-tensor arguments such as a cache object pass through). Patched on the instances only, so parameter
    names and the model class stay as they are."""
    for layer in layers:
        layer.forward = lambda *a, _forward=layer.forward, **kw: checkpoint(_forward, *a, use_reentrant=False, **kw)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


# ----------------------------------------------------------------------------------------------------
# GDN LAYER INPUTS (for the effective attention): q/k/v/g/beta exactly as the layer computes them.

@dataclass
class GDNInputs:
    q_raw: torch.Tensor   # [B, T, Hk, K] after the short conv, before the L2 norm
    k_raw: torch.Tensor
    v: torch.Tensor       # [B, T, HV, V]
    g: torch.Tensor       # [B, T, HV] log decay
    beta: torch.Tensor    # [B, T, HV]
    gate: torch.Tensor | None  # [B, T, HV, V] output gate input (z), before its activation; None: no output gate
    scale: float

    def per_value_head(self, x: torch.Tensor) -> torch.Tensor:
        """Grouped value heads: key head h serves value heads h * r .. h * r + r - 1 (repeat_interleave)."""
        return x.repeat_interleave(self.v.shape[2] // x.shape[2], dim=2)

    @property
    def q(self) -> torch.Tensor:
        return self.per_value_head(tg.l2_normalize(self.q_raw))

    @property
    def k(self) -> torch.Tensor:
        return self.per_value_head(tg.l2_normalize(self.k_raw))


@dataclass
class GDNCall:
    index: int            # layer index in the model
    module: nn.Module
    x: torch.Tensor       # the layer's input hidden states
    mask: torch.Tensor | None
    y: torch.Tensor       # the layer's output (after gate, norm and output projection)


# ----------------------------------------------------------------------------------------------------
# OUR HYBRID: train_gpt.GPT. GDN state = the kernel's initial state (+ conv state), attention state = a KV prefix.

class HybridRunner:
    arch = "hybrid"

    def __init__(self, model: tg.GPT, device: torch.device, compute_dtype: torch.dtype):
        self.model, self.device, self.compute_dtype = model, device, compute_dtype
        self.layout = model.cfg.layout

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == torch.bfloat16)

    def full_logits(self, batch: Batch) -> torch.Tensor:
        self.require_unpadded(batch)
        return self.model(torch.cat([batch.context, batch.decision], 1))[:, -batch.decision.shape[1]:]

    def context_state(self, batch: Batch):
        self.require_unpadded(batch)
        return self.model(batch.context, want_state=True)[1]

    def decision_logits(self, batch: Batch, state) -> torch.Tensor:
        return self.model(batch.decision, state=state)

    def plain_forward(self, tokens: torch.Tensor) -> None:
        self.model(tokens)

    @staticmethod
    def require_unpadded(batch: Batch) -> None:
        if batch.padded:
            raise ValueError("train_gpt.GPT has no padding mask in its GDN layers: hybrid contexts must have equal "
                             "lengths (left padding is supported for --arch qwen3_5)")

    @staticmethod
    def state_tensors(state) -> list[torch.Tensor]:
        return [t for block_state in state for t in block_state]

    def layers(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def split_entries(self, grads: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        return list(grads.items())

    def categorize(self, name: str) -> tuple[str, str]:
        return tg.grad_category(name, self.layout)

    def query_grads(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The query projection gradients of the attention and of the GDN layers, each flattened into one vector."""
        kinds = {"A": "attn", "G": "gdn"}
        out = {kind: [] for kind in kinds.values()}
        for i, kind in enumerate(self.layout):
            out[kinds[kind]].append(grads[f"blocks.{i}.mixer.q_proj.weight"].flatten())
        return {kind: torch.cat(v) for kind, v in out.items() if v}

    def gdn_modules(self) -> list[tuple[int, nn.Module]]:
        return [(i, block.mixer) for i, block in enumerate(self.model.blocks) if block.kind == "G"]

    @staticmethod
    def hook_io(args, kwargs, output) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        return args[0], None, output[0]

    @staticmethod
    def gdn_inputs(m: tg.GatedDeltaNet, x: torch.Tensor, mask) -> GDNInputs:
        B, T, _ = x.shape
        x = x.float()
        proj = lambda linear: F.linear(x, linear.weight.float())  # noqa: E731
        qkv = torch.cat([proj(m.q_proj), proj(m.k_proj), proj(m.v_proj)], -1)
        qkv, _ = tg.causal_conv(qkv, m.conv_weight().float(), None)
        q, k, v = qkv.split([m.H * m.K, m.H * m.K, m.HV * m.Vh], dim=-1)
        g = -m.A_log.float().exp() * F.softplus(proj(m.a_proj) + m.dt_bias.float())
        return GDNInputs(q.view(B, T, m.H, m.K), k.view(B, T, m.H, m.K), v.view(B, T, m.HV, m.Vh), g,
                         proj(m.b_proj).sigmoid(), None if m.g_proj is None else proj(m.g_proj).view(B, T, m.HV, m.Vh),
                         m.K ** -0.5)

    @staticmethod
    def gdn_recurrence(m: tg.GatedDeltaNet, inp: GDNInputs) -> torch.Tensor:
        return tg.gated_delta_rule_torch(inp.q, inp.k, inp.v, inp.g, inp.beta, inp.scale, None, m.chunk_size)[0]

    @staticmethod
    def gdn_output(m: tg.GatedDeltaNet, o: torch.Tensor, inp: GDNInputs) -> torch.Tensor:
        o = tg.rms_norm(o.float(), eps=1e-5) * m.norm_weight.float() * (1.0 if inp.gate is None else F.silu(inp.gate))
        return F.linear(o.flatten(2), m.o_proj.weight.float())


def hybrid_overrides(args) -> list[str]:
    """train_gpt config overrides from the size flags (unset flags keep the gdn_hybrid preset)."""
    if args.head_dim is not None:
        raise ValueError("--arch hybrid derives the attention head dim from --hidden / --heads; drop --head-dim")
    out = [f"model.{key}={value}" for key, value in (
        ("model_dim", args.hidden), ("num_heads", args.heads), ("num_kv_heads", args.kv_heads),
        ("gdn_heads", args.linear_heads), ("gdn_v_heads", args.linear_v_heads), ("gdn_head_dim", args.linear_head_dim),
        ("vocab_size", args.vocab))
        if value is not None]
    if args.layers is not None:
        out.append("model.layout=" + "".join("A" if (i + 1) % args.full_attn_every == 0 else "G"
                                              for i in range(args.layers)))
    return out + args.set


def hybrid_config(args) -> tg.ModelConfig:
    """The random-init hybrid's config. --intermediate becomes mlp_mult relative to the resolved width (--hidden,
    --set model.model_dim=... or the preset's), so the config is resolved once without it."""
    overrides = ["model=gdn_hybrid", "export=none", *hybrid_overrides(args)]
    cfg = tg.load_config(overrides).model
    if args.intermediate is None:
        return cfg
    mult = args.intermediate / cfg.model_dim
    if int(mult * cfg.model_dim) < args.intermediate:  # train_gpt's MLP truncates mlp_mult * model_dim
        mult = math.nextafter(mult, math.inf)
    return tg.load_config([*overrides, f"model.mlp_mult={mult!r}"]).model


def load_hybrid_checkpoint(path: str) -> tuple[tg.ModelConfig, dict]:
    """A train_gpt results JSON: its resolved model config and its exported artifact (dequantized weights)."""
    with open(path) as f:
        results = json.load(f)
    artifact = results.get("artifact_path") or ""
    if not os.path.exists(artifact):
        artifact = os.path.join(os.path.dirname(path), os.path.basename(artifact))
    if not os.path.exists(artifact):
        raise FileNotFoundError(f"{path} names no readable artifact (artifact_path={results.get('artifact_path')!r})")
    with open(artifact, "rb") as f:
        state = tg.load_artifact(f.read())
    return tg.config_from_dict(tg.ModelConfig, results["config"]["model"]), state


def build_hybrid(args, device: torch.device, param_dtype: torch.dtype) -> tuple[HybridRunner, dict]:
    if args.model:
        model_cfg, state = load_hybrid_checkpoint(args.model)
    else:
        model_cfg, state = hybrid_config(args), None
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = tg.GPT(model_cfg)
    if state is not None:
        model.load_state_dict(state)
    elif args.out_proj_std > 0:
        # train_gpt zero-initialises the output projections (GDN/attention o_proj, mlp.proj): at that init every
        # gradient upstream of them is exactly zero and the split would be degenerate. Give them small weights.
        for p in model.parameters():
            if p.dim() == 2 and not p.any():
                nn.init.normal_(p, std=args.out_proj_std)
    kernel = tg.resolve_kernel(model_cfg.kernel, device)
    model.set_kernel(kernel)
    model.to(param_dtype).eval()
    meta = dict(model=dataclasses.asdict(model_cfg), gdn_kernel=f"{kernel} (train_gpt)")
    return HybridRunner(model, device, DTYPES[args.dtype]), meta


# ----------------------------------------------------------------------------------------------------
# HUGGING FACE QWEN3.5: the kernel choice is made at import, a read-only cache carries the context.

def import_qwen3_5(device: torch.device):
    """transformers' Qwen3.5 modeling module. Each GDN kernel function is bound once, at import, by
    use_kernel_func_from_hub_with_fallback: it tries importlib.import_module("fla") and falls back to the torch
    reference on any exception. Off CUDA the FLA Triton kernels cannot run, so `fla` is blocked (None in
    sys.modules makes the import raise) while the module is imported, and restored afterwards."""
    if QWEN_MODELING in sys.modules:
        module = sys.modules[QWEN_MODELING]
        if device.type != "cuda" and gdn_kernel_name(module, device).startswith("fla"):
            raise RuntimeError(f"{QWEN_MODELING} was imported with the FLA kernels bound before frozen_context could "
                               "block them; on a CPU import frozen_context (or call import_qwen3_5) first")
        return module
    if device.type == "cuda":
        return importlib.import_module(QWEN_MODELING)
    saved = sys.modules.get("fla")
    sys.modules["fla"] = None
    try:
        return importlib.import_module(QWEN_MODELING)
    finally:
        if saved is None:
            del sys.modules["fla"]
        else:
            sys.modules["fla"] = saved


def gdn_kernel_name(modeling, device: torch.device) -> str:
    """Where the chunked GDN kernel that transformers runs for inputs on `device` lives. Its wrapper keeps the kernel
    bound at import in its closure. Since transformers 5.25 the wrapper also falls back to the torch reference for
    inputs on a device the package does not support, and with the `kernels` package installed it sits inside an
    nn.Module whose forward closes over it."""
    try:
        wrapper = modeling.torch_chunk_gated_delta_rule
        if isinstance(wrapper, torch.nn.Module):
            wrapper = inspect.getclosurevars(type(wrapper).forward).nonlocals["func"]
        scope = inspect.getclosurevars(wrapper).nonlocals
        impl = scope["implementation"]
        if device.type not in (scope.get("supported_devices") or (device.type,)):
            impl = scope["torch_function"]
        return f"{impl.__module__}.{impl.__name__}"
    except (KeyError, TypeError, AttributeError):
        return "unknown"


def read_only_cache_class():
    from transformers import Cache, DynamicCache

    class ReadOnlyCache(DynamicCache):
        """A view of a filled cache whose update methods return past + new states without storing them.
        transformers' own layers update in place (LinearAttentionLayer copy_()s the conv and recurrent state,
        DynamicLayer concatenates into its stored keys): a no_grad prefill then a grad step fails in backward
        ("modified by an inplace operation") and a second step would see a corrupted context. Sharing the filled
        layers keeps every read path of 5.17 and 5.23 working (get_conv_state / has_previous_state /
        layers[i].conv_states[0] / get_seq_length / get_mask_sizes); nothing here ever writes to them."""

        def __init__(self, filled: Cache):
            Cache.__init__(self, layers=filled.layers)

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            layer = self.layers[layer_idx]
            return torch.cat([layer.keys, key_states], -2), torch.cat([layer.values, value_states], -2)

        def update_conv_state(self, conv_states, layer_idx, state_idx=0, **kwargs):
            past = self.layers[layer_idx].conv_states[state_idx]
            return torch.cat([past.to(conv_states.dtype), conv_states], -1)

        def update_recurrent_state(self, recurrent_states, layer_idx, state_idx=0, **kwargs):
            return recurrent_states

    return ReadOnlyCache


def cache_tensors(cache) -> list[torch.Tensor]:
    """Every tensor a cache layer holds (KV of attention layers, conv + recurrent states of GDN layers)."""
    out = []
    for layer in cache.layers:
        for value in vars(layer).values():
            items = value.values() if isinstance(value, dict) else [value]
            out += [t for t in items if isinstance(t, torch.Tensor)]
    return out


def positions(mask: torch.Tensor) -> torch.Tensor:
    """Left padding: every row counts positions from its first real token, as if it were run alone."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class Qwen35Runner:
    arch = "qwen3_5"

    def __init__(self, model, modeling, device: torch.device, compute_dtype: torch.dtype):
        self.model, self.modeling, self.device, self.compute_dtype = model, modeling, device, compute_dtype
        self.read_only_cache = read_only_cache_class()
        # the forward's cache argument: past_key_values up to 5.17 at least, cache by 5.24 (the old name warns there)
        self.cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.compute_dtype == torch.bfloat16)

    def full_logits(self, batch: Batch) -> torch.Tensor:
        T = batch.decision.shape[1]
        mask = torch.cat([batch.context_mask, torch.ones_like(batch.decision)], 1)
        return self.model(input_ids=torch.cat([batch.context, batch.decision], 1), attention_mask=mask,
                          position_ids=positions(mask), use_cache=False, logits_to_keep=T).logits

    def context_state(self, batch: Batch):
        from transformers import DynamicCache
        cache = DynamicCache(config=self.model.config)
        mask = batch.context_mask
        self.model(input_ids=batch.context, attention_mask=mask, position_ids=positions(mask), use_cache=True,
                   logits_to_keep=1, **{self.cache_kwarg: cache})
        return self.read_only_cache(cache)

    def decision_logits(self, batch: Batch, cache) -> torch.Tensor:
        T = batch.decision.shape[1]
        if T < 2:
            # A one-token step with a cache takes transformers' decode path: causal_conv1d_update writes the cached
            # conv state in place (on every device, so the context would not stay frozen), and on CUDA the
            # recurrence routes to FLA's fused_recurrent kernel, which has no backward.
            raise ValueError("--arch qwen3_5 needs a decision length >= 2: a 1-token step takes the decode path "
                             "(in-place conv state update; FLA fused_recurrent kernel without backward on CUDA)")
        mask = torch.cat([batch.context_mask, torch.ones_like(batch.decision)], 1)
        pos = batch.context_mask.long().sum(-1, keepdim=True) + torch.arange(T, device=batch.decision.device)
        return self.model(input_ids=batch.decision, attention_mask=mask, position_ids=pos, use_cache=True,
                          **{self.cache_kwarg: cache}).logits

    def plain_forward(self, tokens: torch.Tensor) -> None:
        self.model(input_ids=tokens, use_cache=False, logits_to_keep=1)

    @staticmethod
    def state_tensors(cache) -> list[torch.Tensor]:
        return cache_tensors(cache)

    def layers(self) -> list[nn.Module]:
        return list(self.model.model.layers)

    def split_entries(self, grads: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
        """Names as blocks.<i>.<...> (so split_gradient groups per layer); the attention q_proj splits into its
        query rows and its output-gate rows (<name>:query, <name>:gate), the GDN in_proj_qkv into its query, key and
        value rows (<name>:q, <name>:k, <name>:v)."""
        out = []
        for name, g in grads.items():
            name = name.replace("model.layers.", "blocks.", 1)
            if name.endswith("self_attn.q_proj.weight"):
                gate = g.view(self.model.config.num_attention_heads, 2, -1)[:, 1]
                out += [(name + ":query", self.query_half(g)), (name + ":gate", gate)]
            elif name.endswith("linear_attn.in_proj_qkv.weight"):
                out += [(f"{name}:{part}", rows) for part, rows in zip("qkv", g.split(self.gdn_qkv_rows()))]
            else:
                out.append((name, g))
        return out

    @staticmethod
    def categorize(name: str) -> tuple[str, str]:
        parts = name.split(".")
        if parts[0] != "blocks":
            return ("embed", "embed") if "embed_tokens" in name or "lm_head" in name else ("norm", "norm")
        if parts[2] == "mlp":
            return "mlp", "mlp"
        if parts[2] == "linear_attn":  # a row split (<name>:q) is its own group
            return "gdn", name.rpartition(":")[2] if ":" in name else QWEN_GDN_GROUPS[parts[3]]
        if parts[2] == "self_attn":
            return "attn", "gate" if name.endswith(":gate") else QWEN_ATTN_GROUPS[parts[3]]
        return "norm", "norm"  # input_layernorm / post_attention_layernorm

    def query_half(self, q_proj_grad: torch.Tensor) -> torch.Tensor:
        """q_proj emits, per head, [query | output gate]: the rows of the query proper (W_q)."""
        return q_proj_grad.view(self.model.config.num_attention_heads, 2, -1)[:, 0]

    def gdn_qkv_rows(self) -> list[int]:
        """Rows of the GDN in_proj_qkv output, in order: query (key_dim), key (key_dim), value (value_dim), as the
        Hugging Face layer splits it after the conv."""
        config = self.model.config
        key_dim = config.linear_num_key_heads * config.linear_key_head_dim
        return [key_dim, key_dim, config.linear_num_value_heads * config.linear_value_head_dim]

    def query_grads(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W_q of the attention layers (without the gate rows) and the query rows of the GDN in_proj_qkv (takes the
        unsplit gradients, as collect_grads returns them, not split_entries' output)."""
        key_dim = self.gdn_qkv_rows()[0]
        attn = [self.query_half(g).flatten() for n, g in grads.items() if n.endswith("self_attn.q_proj.weight")]
        gdn = [g[:key_dim].flatten() for n, g in grads.items() if n.endswith("linear_attn.in_proj_qkv.weight")]
        return {kind: torch.cat(v) for kind, v in (("attn", attn), ("gdn", gdn)) if v}

    def gdn_modules(self) -> list[tuple[int, nn.Module]]:
        layers = enumerate(self.model.model.layers)
        return [(i, layer.linear_attn) for i, layer in layers if hasattr(layer, "linear_attn")]

    @staticmethod
    def hook_io(args, kwargs, output) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        return x, kwargs.get("attention_mask"), output

    @staticmethod
    def gdn_inputs(m, x: torch.Tensor, mask) -> GDNInputs:
        from transformers.activations import ACT2FN
        B, T, _ = x.shape
        x = x.float() if mask is None else x.float() * mask[:, :, None]
        proj = lambda linear: F.linear(x, linear.weight.float())  # noqa: E731
        qkv = proj(m.in_proj_qkv).transpose(1, 2)
        bias = None if m.conv1d.bias is None else m.conv1d.bias.float()
        qkv = F.conv1d(qkv, m.conv1d.weight.float(), bias, padding=m.conv1d.weight.shape[-1] - 1, groups=qkv.shape[1])
        q, k, v = ACT2FN[m.activation](qkv[..., :T]).transpose(1, 2).split([m.key_dim, m.key_dim, m.value_dim], -1)
        g = -m.A_log.float().exp() * F.softplus(proj(m.in_proj_a) + m.dt_bias.float())
        Hk, HV = m.num_k_heads, m.num_v_heads
        return GDNInputs(q.reshape(B, T, Hk, m.head_k_dim), k.reshape(B, T, Hk, m.head_k_dim),
                         v.reshape(B, T, HV, m.head_v_dim), g, proj(m.in_proj_b).sigmoid(),
                         proj(m.in_proj_z).view(B, T, HV, m.head_v_dim), m.head_k_dim ** -0.5)

    def gdn_recurrence(self, m, inp: GDNInputs) -> torch.Tensor:
        """transformers' torch reference kernel (unwrapped from the FLA binding: on CUDA the FLA kernels would
        compile and autotune anew for these fp32 inputs, minutes; the layer's real output, FLA's on CUDA, is
        checked end to end instead). q and k go in repeated per value head: 5.17's torch kernel has no
        grouped-value support (its layer repeats them before the call), 5.23's accepts either."""
        q, k = (inp.per_value_head(x).contiguous() for x in (inp.q_raw, inp.k_raw))
        return inspect.unwrap(self.modeling.torch_chunk_gated_delta_rule)(
            q, k, inp.v.contiguous(), g=inp.g, beta=inp.beta,
            initial_state=None, output_final_state=False, use_qk_l2norm_in_kernel=True)[0].float()

    @staticmethod
    def gdn_output(m, o: torch.Tensor, inp: GDNInputs) -> torch.Tensor:
        B, T, HV, V = o.shape
        normed = m.norm(o.float().reshape(-1, V).to(m.norm.weight.dtype), inp.gate.reshape(-1, V))
        return F.linear(normed.float().reshape(B, T, HV * V), m.out_proj.weight.float())


def qwen_config_kwargs(args) -> dict:
    size = {key: default if getattr(args, key) is None else getattr(args, key) for key, default in TINY_QWEN.items()}
    kwargs = dict(vocab_size=size["vocab"], hidden_size=size["hidden"], intermediate_size=size["intermediate"],
                  num_hidden_layers=size["layers"], num_attention_heads=size["heads"],
                  num_key_value_heads=size["kv_heads"], head_dim=size["head_dim"],
                  linear_num_key_heads=size["linear_heads"], linear_num_value_heads=size["linear_v_heads"],
                  linear_key_head_dim=size["linear_head_dim"], linear_value_head_dim=size["linear_head_dim"],
                  layer_types=["full_attention" if (i + 1) % args.full_attn_every == 0 else "linear_attention"
                               for i in range(size["layers"])])
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    return kwargs


def mamba_decay_init(model) -> None:
    """A_log = log U(1, 16) and dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 1e-1]: the init of FLA's
    GatedDeltaNet and of train_gpt, whose per-token retention exp(-A dt) is mostly > 0.9. Hugging Face's Qwen3.5
    init (A ~ U(0.01, 16), dt_bias = 1) retains about exp(-1.3 A) per token: almost every head forgets within a few
    tokens, so a random-init Qwen3.5 carries little through its GDN states."""
    with torch.no_grad():
        for layer in model.model.layers:
            if hasattr(layer, "linear_attn"):
                m = layer.linear_attn
                H = m.A_log.numel()
                dt = torch.exp(torch.rand(H) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
                m.A_log.copy_(torch.empty(H).uniform_(1, 16).log())
                m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def require_full_attention(args, layer_types: list[str]) -> None:
    """The tiers carry the context in a transformers cache, which takes the context length from its attention
    layers (get_seq_length raises without one); the effective attention needs no cache."""
    if args.mode != "effective-attention" and "full_attention" not in layer_types:
        source = f"--model {args.model}" if args.model else (
            f"--layers {len(layer_types)} --full-attn-every {args.full_attn_every}")
        raise ValueError(f"--arch qwen3_5 with {source} has no full_attention layer (layer_types={layer_types}); "
                         "the tiers need one (transformers' cache reads the context length from attention layers): "
                         "set --full-attn-every <= --layers, or run the effective-attention mode only")


def build_qwen3_5(args, device: torch.device, param_dtype: torch.dtype) -> tuple[Qwen35Runner, dict]:
    modeling = import_qwen3_5(device)
    torch.manual_seed(args.seed)
    if args.model:
        model = modeling.Qwen3_5ForCausalLM.from_pretrained(args.model, local_files_only=True, dtype=param_dtype)
        require_full_attention(args, model.config.layer_types)
    else:
        from transformers import Qwen3_5TextConfig
        config = Qwen3_5TextConfig(**qwen_config_kwargs(args))
        require_full_attention(args, config.layer_types)
        with torch.device(device):
            model = modeling.Qwen3_5ForCausalLM(config)
        if args.gdn_decay_init == "mamba":
            mamba_decay_init(model)
    model.to(device=device, dtype=param_dtype).eval()
    meta = dict(model=model.config.to_dict(), gdn_kernel=gdn_kernel_name(modeling, device))
    return Qwen35Runner(model, modeling, device, DTYPES[args.dtype]), meta


def build_runner(args):
    device, param_dtype = torch.device(args.device), DTYPES[args.param_dtype]
    build = build_hybrid if args.arch == "hybrid" else build_qwen3_5
    return build(args, device, param_dtype)


def vocab_size(runner) -> int:
    return runner.model.cfg.vocab_size if runner.arch == "hybrid" else runner.model.config.vocab_size


# ----------------------------------------------------------------------------------------------------
# TIERS

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> int | None:
    """Start a peak-memory window; returns the bytes allocated now (CUDA only; None elsewhere)."""
    if device.type != "cuda":
        return None
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.memory_allocated(device)


def peak_mib(device: torch.device, base: int | None) -> tuple[float | None, float | None]:
    """(peak allocated, peak above the window's start) in MiB; CPU: (None, None), reported as n/a (the process's
    peak RSS is a high-water mark that cannot be reset between tiers)."""
    if base is None:
        return None, None
    peak = torch.cuda.max_memory_allocated(device)
    return peak / 2**20, (peak - base) / 2**20


def train_step(runner, batch: Batch, state, use_checkpointing: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (full, or the decision tokens from a frozen state) + cross-entropy on the decision targets + backward."""
    with checkpointed(runner.layers()) if use_checkpointing else contextlib.nullcontext(), runner.autocast():
        logits = runner.full_logits(batch) if state is None else runner.decision_logits(batch, state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch.targets.flatten())
    loss.backward()
    return loss.detach(), logits.detach()


def collect_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """fp32 CPU copies (a parameter without a gradient counts as zero), so tiers can be compared afterwards
    without holding several gradient sets on the accelerator. Copied to the CPU before the cast: no fp32 copy of
    a bf16 gradient is ever allocated on the accelerator."""
    return {n: p.grad.detach().cpu().float() if p.grad is not None else torch.zeros(p.shape)
            for n, p in model.named_parameters()}


@dataclass
class TierResult:
    name: str
    loss: float
    step_s: float
    peak_mib: float | None
    peak_over_base_mib: float | None
    split: dict
    mixers: dict
    grads: dict
    logits: torch.Tensor
    prefill_s: float | None = None
    prefill_peak_mib: float | None = None
    state_issues: int | None = None          # frozen: state tensors that require or received a gradient
    state_unchanged: bool | None = None      # frozen: the cached state is bit-identical after all steps
    repeat_max_rel: float | None = None      # frozen: grad_difference between the last two steps

    def summary(self) -> dict:
        skip = {"grads", "logits"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip}


def prefill(runner, batch: Batch):
    base = reset_peak(runner.device)
    start = time.perf_counter()
    with torch.no_grad(), runner.autocast():
        state = runner.context_state(batch)
    synchronize(runner.device)
    return state, time.perf_counter() - start, peak_mib(runner.device, base)[0]


def run_tier(runner, batch: Batch, name: str, warmup: int = 0, repeats: int = 1) -> TierResult:
    """Run one tier warmup + repeats times (a frozen tier at least twice: the repeat check compares the last two
    steps, which reuse one prefilled state); time and memory from the timed steps, gradients from the last."""
    progress(f"tier {name}")
    frozen, use_ckpt = TIERS[name]
    state, prefill_s, prefill_peak, snapshot = None, None, None, None
    if frozen:
        for _ in range(warmup):
            prefill(runner, batch)
        state, prefill_s, prefill_peak = prefill(runner, batch)
        snapshot = [t.detach().cpu().clone() for t in runner.state_tensors(state)]
    steps = warmup + max(repeats, 2 if frozen else 1)
    times, peaks, previous = [], [], None
    for i in range(steps):
        loss = logits = None  # the previous step's outputs would still be allocated during this step
        runner.model.zero_grad(set_to_none=True)
        # One peak window per step, read right after it: the gradient copies between steps stay outside.
        base = reset_peak(runner.device)
        start = time.perf_counter()
        loss, logits = train_step(runner, batch, state, use_ckpt)
        synchronize(runner.device)
        times.append(time.perf_counter() - start)
        peaks.append(peak_mib(runner.device, base))
        if frozen and i == steps - 2:
            previous = collect_grads(runner.model)
    grads = collect_grads(runner.model)
    runner.model.zero_grad(set_to_none=True)
    split = tg.split_gradient(runner.split_entries(grads), runner.categorize)
    peak, over_base = (None if None in column else max(column) for column in zip(*peaks[warmup:]))
    result = TierResult(name, loss.item(), statistics.median(times[warmup:]), peak, over_base, split,
                        mixer_split(runner, grads), grads, logits.float().cpu(), prefill_s, prefill_peak)
    if frozen:
        inspect_frozen_state(result, runner.state_tensors(state), snapshot, previous)
    return result


def inspect_frozen_state(result: TierResult, tensors: list[torch.Tensor], snapshot: list[torch.Tensor],
                         previous_grads: dict) -> None:
    """After the frozen steps: no context-state tensor requires or received a gradient, the state is bit-identical
    to its copy taken right after the prefill, and two steps on it gave the same gradients."""
    result.state_issues = sum(t.requires_grad or t.grad is not None for t in tensors)
    result.state_unchanged = len(tensors) == len(snapshot) and all(
        torch.equal(t.cpu(), s) for t, s in zip(tensors, snapshot))
    result.repeat_max_rel = grad_difference(result.grads, previous_grads)["max_rel"]


def mixer_split(runner, grads: dict) -> dict:
    """The claim "75% of the gradient goes through GDN because 75% of the layers are GDN", measured on the mixers
    alone (GDN and attention parameters, MLPs excluded): the GDN share of the mixer squared gradient norm next to
    the fraction of mixer layers that are GDN, the mean share of one GDN layer and of one attention layer, and the
    share of every layer."""
    per_layer = {}
    for name, g in runner.split_entries(grads):
        kind = runner.categorize(name)[0]
        if kind in ("gdn", "attn"):
            layer = int(name.split(".")[1])
            per_layer[layer] = (kind, per_layer.get(layer, (kind, 0.0))[1] + g.double().pow(2).sum().item())
    total = sum(sq for _, sq in per_layer.values()) or 1.0
    shares = {kind: [sq / total for k, sq in per_layer.values() if k == kind] for kind in ("gdn", "attn")}
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return dict(gdn_share=sum(shares["gdn"]), gdn_layer_fraction=len(shares["gdn"]) / max(len(per_layer), 1),
                per_gdn_layer=mean(shares["gdn"]), per_attn_layer=mean(shares["attn"]),
                by_layer={f"{i}:{kind}": sq / total for i, (kind, sq) in sorted(per_layer.items())})


def grad_difference(grads: dict, reference: dict) -> dict:
    """max over parameters of ||g - g_ref|| / ||g_ref|| (parameters whose reference norm is below 1e-6 of the
    largest are compared by ||g - g_ref|| / largest instead, so near-zero gradients do not blow up the ratio)."""
    norms = {n: reference[n].double().norm().item() for n in reference}
    floor = 1e-6 * max(norms.values())
    per_param = {n: (grads[n].double() - reference[n].double()).norm().item() / max(norms[n], floor) for n in reference}
    worst = max(per_param, key=per_param.get)
    return dict(max_rel=per_param[worst], worst_param=worst)


def through_context(runner, full: TierResult, frozen: TierResult) -> dict:
    """Per block type: ||g_full - g_frozen|| / ||g_full||, the part of the full gradient that flows through the
    context's state (exactly what freezing the context drops)."""
    sums = {}
    for (name, g_full), (_, g_frozen) in zip(runner.split_entries(full.grads), runner.split_entries(frozen.grads)):
        kind = runner.categorize(name)[0]
        diff, ref = sums.get(kind, (0.0, 0.0))
        g_full = g_full.double()
        sums[kind] = (diff + (g_full - g_frozen.double()).pow(2).sum().item(), ref + g_full.pow(2).sum().item())
    total_diff, total_ref = (sum(v[i] for v in sums.values()) for i in (0, 1))
    out = {kind: (d / r) ** 0.5 if r > 0 else 0.0 for kind, (d, r) in sums.items()}
    return dict(out, total=(total_diff / total_ref) ** 0.5)


def context_dependence(runner, batch: Batch, frozen: TierResult, other_context: torch.Tensor) -> dict:
    """Relative change of the query-projection gradients (frozen tier) when only the context changes."""
    other = run_tier(runner, dataclasses.replace(batch, context=other_context), "frozen")
    a, b = runner.query_grads(frozen.grads), runner.query_grads(other.grads)
    return {kind: relative_error(b[kind], a[kind]) for kind in a}


def left_padding_difference(runner, batch: Batch) -> float:
    """Two rows, the second with a context half as long (left-padded): max |logit difference| / max |logit| between
    the padded batch and each row run alone, for the full forward and for the frozen-context step."""
    P = batch.context.shape[1]
    pad = P - P // 2
    rows = [min(r, batch.context.shape[0] - 1) for r in (0, 1)]
    context, mask = batch.context[rows].clone(), batch.context_mask[rows].clone()
    context[1, :pad], mask[1, :pad] = 0, 0
    padded = Batch(context, mask, batch.decision[rows], batch.targets[rows])
    worst, scale = 0.0, 0.0
    with torch.no_grad(), runner.autocast():
        together = [runner.full_logits(padded), runner.decision_logits(padded, runner.context_state(padded))]
        for r, start in ((0, 0), (1, pad)):
            alone = Batch(context[r:r + 1, start:], mask[r:r + 1, start:], padded.decision[r:r + 1],
                          padded.targets[r:r + 1])
            singles = [runner.full_logits(alone), runner.decision_logits(alone, runner.context_state(alone))]
            worst = max([worst] + [(t[r:r + 1] - s).abs().max().item() for t, s in zip(together, singles)])
            scale = max([scale] + [s.abs().max().item() for s in singles])
    return worst / scale


def check_dtype(runner, args) -> torch.dtype:
    """The dtype that sets the tolerances: bf16 if parameters or compute are bf16."""
    return torch.bfloat16 if torch.bfloat16 in (runner.compute_dtype, DTYPES[args.param_dtype]) else torch.float32


def equality_checks(results: dict[str, TierResult], device: torch.device, dtype: torch.dtype) -> dict:
    """Frozen logits == full logits, checkpointed grads == plain grads, and the frozen state detached, unchanged
    and giving identical gradients step after step."""
    checks, tol_logits, tol_grads = {}, tolerance("logits", device, dtype), tolerance("grads", device, dtype)
    if "full" in results and "frozen" in results:
        full, frozen = results["full"], results["frozen"]
        diff = ((frozen.logits - full.logits).abs().max() / full.logits.abs().max()).item()
        checks["frozen_logits_match_full"] = check(diff, tol_logits, diff <= tol_logits,
                                                   "max|logit diff| / max|logit|, frozen vs full forward")
    for plain, ckpt in (("full", "full_ckpt"), ("frozen", "frozen_ckpt")):
        if plain in results and ckpt in results:
            d = grad_difference(results[ckpt].grads, results[plain].grads)
            checks[f"{ckpt}_grads_match_{plain}"] = check(
                d["max_rel"], tol_grads, d["max_rel"] <= tol_grads,
                f"max_param ||g_ckpt - g|| / ||g|| (worst: {d['worst_param']})")
    for name in ("frozen", "frozen_ckpt"):
        if name in results:
            r = results[name]
            checks[f"{name}_state_detached"] = check(r.state_issues, 0, r.state_issues == 0,
                                                     "context-state tensors that require or received a gradient")
            checks[f"{name}_state_unchanged"] = check(float(not r.state_unchanged), 0, r.state_unchanged,
                                                      "1 if the cached context state changed across steps")
            checks[f"{name}_repeat_identical"] = check(
                r.repeat_max_rel, tol_grads, r.repeat_max_rel <= tol_grads,
                "max_param ||g_step2 - g_step1|| / ||g_step1||, two steps on one cached state")
    return checks


def run_tiers(runner, batch: Batch, other_context: torch.Tensor, args) -> dict:
    dtype = check_dtype(runner, args)
    results = {}
    for name in args.tiers:
        results[name] = r = run_tier(runner, batch, name, args.warmup, args.repeats)
        progress(f"tier {name}: loss {r.loss:.4f}, {r.step_s * 1e3:.1f} ms/step, peak {fmt(r.peak_mib, '.0f')} MiB, "
                 f"gdn share of mixers {r.mixers['gdn_share']:.4f}")
    checks = equality_checks(results, runner.device, dtype)
    report = {"tiers": {name: r.summary() for name, r in results.items()}}
    if "frozen" in results:
        progress("W_q context dependence (frozen tier on another context)")
        dependence = context_dependence(runner, batch, results["frozen"], other_context)
        report["wq_context_dependence"] = dependence
        attn = dependence.get("attn")  # None: no attention layer, the check is n/a
        checks["attn_wq_depends_on_context"] = check(attn, WQ_MIN_DEPENDENCE,
                                                     None if attn is None else attn > WQ_MIN_DEPENDENCE,
                                                     "||dW_q(ctx B) - dW_q(ctx A)|| / ||dW_q(ctx A)||, attention, "
                                                     "frozen tier, same decision tokens; must be clearly > 0")
    if "full" in results and "frozen" in results:
        report["gradient_through_context"] = through_context(runner, results["full"], results["frozen"])
    if runner.arch == "qwen3_5":
        progress("left padding check")
        diff, tol = left_padding_difference(runner, batch), tolerance("logits", runner.device, dtype)
        checks["left_padding_matches_alone"] = check(diff, tol, diff <= tol,
                                                     "max|logit diff| / max|logit|, left-padded 2-row batch vs each "
                                                     "row alone (full forward and frozen step)")
    report["checks"] = checks
    return report


# ----------------------------------------------------------------------------------------------------
# EFFECTIVE ATTENTION OF A GDN LAYER
# Delta rule: S_t = exp(g_t) (I - b_t k_t k_t^T) S_{t-1} + b_t k_t v_t^T,  o_t = scale S_t^T q_t  (S_0 = 0).
# Write S_t = exp(g_t) S_{t-1} + k_t u_t^T with u_t = b_t (v_t - exp(g_t) S_{t-1}^T k_t). Unrolling,
# S_t = sum_{r<=t} exp(G_t - G_r) k_r u_r^T (G = cumulative log decay), hence
#   o_t = scale sum_{r<=t} exp(G_t - G_r) (q_t . k_r) u_r                          -> O = (scale QK^T * D * C) U
#   u_s = b_s v_s - b_s sum_{r<s} exp(G_s - G_r) (k_s . k_r) u_r                   -> (I + A) U = diag(b) V
# with D[t, r] = exp(G_t - G_r), C the inclusive causal mask, A[s, r] = b_s exp(G_s - G_r) (k_s . k_r) for r < s.
# So O = M V with  M = scale (QK^T * D * C) (I + A)^-1 diag(b)   (exact, q and k L2-normalised).
# Dropping the delta rule's erase term (I - b k k^T) gives (I + A)^-1 -> I, the decay-only approximation
#   M_decay[i, j] = scale (q_i . k_j) b_j exp(G_i - G_j),  j <= i.
# TransformerLens' GatedDeltaNetBridge.compute_effective_attention computes that decay-only form, but on the raw
# (post-conv, un-normalised) q and k and without the 1/sqrt(d_k) scale ("bridge" below); its docstring calls it a
# heuristic, not an output decomposition.

def decay_scores(q, k, g, scale) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k [B, T, H, K], g [B, T, H] -> (scale (q_i . k_j) exp(G_i - G_j) on j <= i, the decay matrix, k as
    [B, H, T, K]), all float64 [B, H, T, T]."""
    q, k = q.transpose(1, 2).double(), k.transpose(1, 2).double()
    G = g.transpose(1, 2).double().cumsum(-1)
    T = G.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool, device=G.device).tril()
    decay = (G[..., :, None] - G[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    return scale * (q @ k.transpose(-1, -2)) * decay, decay, k


def effective_attention(q, k, g, beta, scale) -> torch.Tensor:
    """Exact M [B, H, T, T] (float64) with O = M V for the gated delta rule from a zero state."""
    scores, decay, k = decay_scores(q, k, g, scale)
    b = beta.transpose(1, 2).double()
    A = (b[..., :, None] * (k @ k.transpose(-1, -2)) * decay).tril(-1)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    return scores @ torch.linalg.solve_triangular(eye + A, torch.diag_embed(b), upper=False, unitriangular=True)


def decay_only_attention(q, k, g, beta, scale) -> torch.Tensor:
    """The decay-only approximation M_decay (float64): the delta rule's erase terms ignored."""
    return decay_scores(q, k, g, scale)[0] * beta.transpose(1, 2).double()[..., None, :]


def topk_overlap(M: torch.Tensor, M_approx: torch.Tensor, k: int) -> torch.Tensor:
    """Per head: mean over rows i >= k - 1 of |top-k sources of |M[i]|  ∩  top-k of |M_approx[i]|| / k."""
    T = M.shape[-1]
    upper = torch.ones(T, T, dtype=torch.bool, device=M.device).triu(1)
    top = [x.abs().masked_fill(upper, -1.0).topk(k, dim=-1).indices for x in (M, M_approx)]
    hits = (top[0][..., :, None] == top[1][..., None, :]).any(-1).double().mean(-1)  # [B, H, T]
    return hits[..., k - 1:].mean(dim=(0, 2))


def per_head_rel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """||a - b||_F / ||b||_F per head over [B, H, ...] tensors."""
    dims = [0] + list(range(2, a.dim()))
    return (a - b).pow(2).sum(dims).sqrt() / b.pow(2).sum(dims).sqrt().clamp_min(1e-300)


def capture_gdn_calls(runner, tokens: torch.Tensor) -> list[GDNCall]:
    calls, handles = [], []
    for index, module in runner.gdn_modules():
        def record(mod, args, kwargs, output, index=index):
            x, mask, y = runner.hook_io(args, kwargs, output)
            calls.append(GDNCall(index, mod, x.detach(), None if mask is None else mask.detach(), y.detach()))
        handles.append(module.register_forward_hook(record, with_kwargs=True))
    try:
        with torch.no_grad(), runner.autocast():
            runner.plain_forward(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def layer_effective_attention(runner, call: GDNCall, topk: int) -> dict:
    with torch.no_grad():
        inp = runner.gdn_inputs(call.module, call.x, call.mask)
        recurrence = runner.gdn_recurrence(call.module, inp).transpose(1, 2).double()  # [B, HV, T, V]
        M = effective_attention(inp.q, inp.k, inp.g, inp.beta, inp.scale)
        M_decay = decay_only_attention(inp.q, inp.k, inp.g, inp.beta, inp.scale)
        q_raw, k_raw = inp.per_value_head(inp.q_raw), inp.per_value_head(inp.k_raw)
        M_bridge = decay_only_attention(q_raw, k_raw, inp.g, inp.beta, 1.0)
        V = inp.v.transpose(1, 2).double()
        layer_out = runner.gdn_output(call.module, (M @ V).transpose(1, 2).float(), inp)
        heads = dict(exact_vs_recurrence=per_head_rel(M @ V, recurrence),
                     decay_vs_recurrence=per_head_rel(M_decay @ V, recurrence),
                     decay_rel_fro=per_head_rel(M_decay, M), bridge_rel_fro=per_head_rel(M_bridge, M),
                     decay_mass_ratio=M_decay.abs().sum((0, 2, 3)) / M.abs().sum((0, 2, 3)),
                     topk_overlap=topk_overlap(M, M_decay, min(topk, M.shape[-1])))
    out = {"layer": call.index, "exact_output_vs_layer": relative_error(layer_out, call.y.float()),
           "retention_mean": inp.g.exp().mean().item()}
    for name, values in heads.items():
        out[name] = dict(mean=values.mean().item(), max=values.max().item(), per_head=values.tolist())
    return out


def effective_attention_report(runner, tokens: torch.Tensor, topk: int, dtype: torch.dtype) -> tuple[dict, dict]:
    progress(f"effective attention over {tokens.shape[1]} tokens")
    layers = [layer_effective_attention(runner, call, topk) for call in capture_gdn_calls(runner, tokens)]
    exact = max(layer["exact_vs_recurrence"]["max"] for layer in layers)
    output = max(layer["exact_output_vs_layer"] for layer in layers)
    # M is computed in float64 from fp32 inputs; the recurrence it is checked against runs in fp32 (TF32 on CUDA).
    tol_exact, tol_out = tolerance("output", runner.device, torch.float32), tolerance("output", runner.device, dtype)
    checks = {
        "ea_exact_reproduces_recurrence": check(exact, tol_exact, exact <= tol_exact,
                                                "max over layers/heads of ||M V - recurrence|| / ||recurrence||"),
        "ea_exact_reproduces_layer_output": check(output, tol_out, output <= tol_out,
                                                  "max over layers: M V through gate/norm/out_proj vs the layer's "
                                                  "own output in the forward pass"),
    }
    return dict(length=tokens.shape[1], topk=topk, layers=layers), checks


# ----------------------------------------------------------------------------------------------------
# REPORT

def fmt(value, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def fmt_share(value) -> str:
    return fmt(value, ".4f" if value is None or value == 0 or abs(value) >= 1e-3 else ".1e")


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(str(x).rjust(w) for x, w in zip(row, widths)))


def print_report(report: dict) -> None:
    print(f"arch={report['arch']} device={report['device']} dtype={report['dtype']} params={report['param_dtype']} "
          f"gdn_kernel={report['gdn_kernel']} batch={report['batch']} context={report['context']} "
          f"decision={report['decision']}")
    if report.get("tiers"):
        print_tiers(report)
    if report.get("effective_attention"):
        print_effective_attention(report["effective_attention"])
    print_table("checks", ["check", "value", "tol", "pass"],
                [[name, fmt(c["value"], ".3g"), fmt(c["tol"], ".3g"),
                  "n/a" if c["passed"] is None else "PASS" if c["passed"] else "FAIL"]
                 for name, c in report["checks"].items()])


def print_tiers(report: dict) -> None:
    tiers = report["tiers"]
    kinds = sorted({k for t in tiers.values() for k in t["split"]["type"]})
    print_table("tiers (type shares of the squared gradient norm)",
                ["tier", "loss", "step_ms", "prefill_ms", "peak_MiB", "peak_over_base_MiB", "grad_norm", *kinds],
                [[name, fmt(t["loss"]), fmt(t["step_s"] * 1e3, ".1f"),
                  fmt(t["prefill_s"] and t["prefill_s"] * 1e3, ".1f"), fmt(t["peak_mib"], ".0f"),
                  fmt(t["peak_over_base_mib"], ".0f"), fmt(t["split"]["total_norm"], ".4g"),
                  *[fmt_share(t["split"]["type"].get(k, 0.0)) for k in kinds]] for name, t in tiers.items()])
    groups = sorted({g for t in tiers.values() for g in t["split"]["group"] if g.split(".")[0] in ("gdn", "attn")})
    print_table("groups inside GDN and attention (shares of the total)", ["tier", *groups],
                [[name, *[fmt_share(t["split"]["group"].get(g, 0.0)) for g in groups]] for name, t in tiers.items()])
    print_table("mixers only (GDN + attention parameters): GDN share vs GDN layer fraction",
                ["tier", "gdn_layer_fraction", "gdn_share", "per_gdn_layer", "per_attn_layer"],
                [[name, fmt(t["mixers"]["gdn_layer_fraction"]), fmt(t["mixers"]["gdn_share"]),
                  fmt_share(t["mixers"]["per_gdn_layer"]), fmt_share(t["mixers"]["per_attn_layer"])]
                 for name, t in tiers.items()])
    layers = list(next(iter(tiers.values()))["mixers"]["by_layer"])
    print_table("share of the mixer gradient per layer", ["layer:type", *tiers],
                [[layer, *[fmt_share(t["mixers"]["by_layer"][layer]) for t in tiers.values()]] for layer in layers])
    for key, title in (("gradient_through_context", "gradient through the context: ||g_full - g_frozen|| / ||g_full||"),
                       ("wq_context_dependence", "query-projection gradient change under another context (frozen)")):
        if key in report:
            print_table(title, list(report[key]), [[fmt(v) for v in report[key].values()]])


def print_effective_attention(ea: dict) -> None:
    columns = {"retention": ("retention_mean", None, ".3f"), "exact_MV_err": ("exact_vs_recurrence", "max", ".2e"),
               "out_err": ("exact_output_vs_layer", None, ".2e"),
               "decay_MV_err": ("decay_vs_recurrence", "mean", ".3f"),
               "decay_rel_fro": ("decay_rel_fro", "mean", ".3f"), "bridge_rel_fro": ("bridge_rel_fro", "mean", ".3f"),
               "decay_mass_ratio": ("decay_mass_ratio", "mean", ".3f"),
               f"top{ea['topk']}_overlap": ("topk_overlap", "mean", ".3f")}
    cell = lambda layer, key, stat: layer[key] if stat is None else layer[key][stat]  # noqa: E731
    print_table(f"effective attention of the GDN layers (length {ea['length']}; exact_MV_err: max over heads, "
                "the rest: means over heads)", ["layer", *columns],
                [[layer["layer"], *[fmt(cell(layer, key, stat), spec) for key, stat, spec in columns.values()]]
                 for layer in ea["layers"]])


def package_versions() -> dict:
    """The versions of the modules this process imports: a module's own __version__ where it has one, since the
    installed distribution's metadata can name another copy (the lent GPU puts a newer Triton ahead on the path)."""
    out = {"torch": torch.__version__}
    for module, dist in (("transformers", "transformers"), ("fla", "flash-linear-attention"), ("triton", "triton")):
        try:
            out[dist] = getattr(importlib.import_module(module), "__version__", None) or importlib.metadata.version(dist)
        except (ImportError, importlib.metadata.PackageNotFoundError):
            out[dist] = None
    return out


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", default="all", choices=["all", "tiers", "effective-attention"])
    p.add_argument("--arch", choices=["hybrid", "qwen3_5"], default="hybrid")
    p.add_argument("--model", help="hybrid: a train_gpt results JSON (config + artifact); qwen3_5: a local checkpoint "
                                   "directory (local_files_only). Default: random init")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--decision", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens", help="token shards (glob) to read the batch from; default: uniform random ids")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default="fp32", help="compute dtype (bf16: autocast)")
    p.add_argument("--param-dtype", choices=list(DTYPES), default="fp32", help="parameter storage dtype")
    for size in TINY_QWEN:
        p.add_argument("--" + size.replace("_", "-"), type=int,
                       help="model size (default: the gdn_hybrid preset / a tiny Qwen3.5)")
    p.add_argument("--full-attn-every", type=int, default=4,
                   help="with --layers: every n-th layer is full attention (> --layers: none)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config: train_gpt override (hybrid) or Qwen3_5TextConfig field (qwen3_5)")
    p.add_argument("--out-proj-std", type=float, default=0.02,
                   help="hybrid random init: std for the output projections train_gpt zero-initialises (0: keep)")
    p.add_argument("--gdn-decay-init", choices=["hf", "mamba"], default="hf",
                   help="qwen3_5 random init of A_log/dt_bias: Hugging Face's (fast decay) or FLA/train_gpt's (slow)")
    p.add_argument("--tiers", type=lambda s: s.split(","), default=list(TIERS))
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ea-length", type=int, default=256, help="tokens for the effective attention (row 0)")
    p.add_argument("--ea-topk", type=int, default=8)
    p.add_argument("--out", help="write the report as JSON")
    args = p.parse_args(argv)
    limits = [("context", 1, ""), ("decision", 1, ""), ("batch", 1, ""), ("warmup", 0, ""), ("repeats", 1, ""),
              ("full_attn_every", 1, ""), ("ea_length", 1, ""), ("ea_topk", 1, "")]
    if args.arch == "qwen3_5" and args.mode != "effective-attention":
        limits.append(("decision", 2, " for --arch qwen3_5: a 1-token step takes transformers' decode path, which "
                                      "writes the cached conv state in place"))
    for option, least, why in limits:
        value = getattr(args, option)
        if value < least:
            p.error(f"--{option.replace('_', '-')} {value}: expected an integer >= {least}{why}")
    for item in args.set:
        if "=" not in item:
            p.error(f"--set {item!r}: expected KEY=VALUE")
    if args.arch == "hybrid" and args.intermediate is not None and any(
            item.split("=", 1)[0] == "model.mlp_mult" for item in args.set):
        p.error("--intermediate sets model.mlp_mult; drop one of --intermediate and --set model.mlp_mult=...")
    unknown = set(args.tiers) - set(TIERS)
    if unknown:
        p.error(f"--tiers: unknown {sorted(unknown)}; choose from {', '.join(TIERS)}")
    sizes = [size for size in TINY_QWEN if getattr(args, size) is not None]
    if args.model and (sizes or args.set):
        p.error(f"--model sets the model; drop {', '.join('--' + f.replace('_', '-') for f in sizes) or '--set'}")
    if args.gdn_decay_init != "hf" and (args.arch != "qwen3_5" or args.model):
        p.error("--gdn-decay-init applies to a random-init --arch qwen3_5 only")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    runner, meta = build_runner(args)
    vocab = vocab_size(runner)
    tokens = sample_tokens(args, vocab, args.seed, runner.device)
    batch = make_batch(tokens, args.context)
    report = dict(arch=args.arch, device=str(runner.device), dtype=args.dtype, param_dtype=args.param_dtype,
                  batch=args.batch, context=args.context, decision=args.decision, seed=args.seed,
                  versions=package_versions(), **meta, checks={})
    if args.mode in ("all", "tiers"):
        other_context = sample_tokens(args, vocab, args.seed + 1, runner.device)[:, :args.context]
        report.update(run_tiers(runner, batch, other_context, args))
    if args.mode in ("all", "effective-attention"):
        ea, checks = effective_attention_report(runner, tokens[:1, :args.ea_length], args.ea_topk,
                                                check_dtype(runner, args))
        report["effective_attention"] = ea
        report["checks"].update(checks)
    print_report(report)
    if args.out:
        tg.write_json(args.out, report)
    return report


def exit_status(report: dict) -> int:
    """1 when a check fails; a check that does not apply (n/a) is no failure."""
    return int(any(c["passed"] is False for c in report["checks"].values()))


if __name__ == "__main__":
    sys.exit(exit_status(main()))

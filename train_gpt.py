"""train_gpt.py: one-file trainer for Gated DeltaNet (GDN) / softmax-attention hybrid language models.

A stack of blocks described by a layout string (G = Gated DeltaNet mixer, A = softmax attention), trained
under a wallclock budget with Muon + AdamW, scored by exact bits per byte on the validation split, and
exported as a GPTQ int6/int8 artifact whose size counts against the 16,000,000-byte limit.

Run:  torchrun --standalone --nproc_per_node=8 train_gpt.py model=attention train.max_wallclock_seconds=300
      python train_gpt.py --config resolved.yaml [overrides]     (a resolved config, e.g. from a sweep job)
The GDN recurrence runs on FLA's Triton kernels on CUDA and on a plain-torch chunked kernel elsewhere.
"""
from __future__ import annotations

import contextlib, copy, dataclasses, glob, hashlib, importlib.util, json, lzma, math, os, platform, resource, subprocess, sys, time, traceback, uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch, torch.distributed as dist, torch.nn as nn, torch.nn.functional as F

triton = importlib.import_module("triton") if importlib.util.find_spec("triton") else None  # CUDA torch ships it
tl = triton.language if triton else None
os.environ.setdefault("FLA_CACHE_RESULTS", "0")  # FLA's autotune keys lack the length: no pick kept on disk from a small input

# ----------------------------------------------------------------------------------------------------
# HYPERPARAMETERS: one validated dataclass tree; a misspelled key lists the valid keys, a bad number its range.

@dataclass
class ModelConfig:
    preset: str = "gdn_hybrid"          # a name for logs and reports (conf/model/<preset>.yaml sets the layout)
    layout: str = "GGGGAGGGAG"          # one letter per block: G = Gated DeltaNet, A = attention
    vocab_size: int = 8192
    model_dim: int = 512
    num_heads: int = 8                  # attention query heads
    num_kv_heads: int = 4
    mlp_mult: float = 3.0
    gdn_heads: int = 8
    gdn_head_dim: int = 64
    gdn_expand_v: float = 1.0
    gdn_v_heads: int = 0                # 0: gdn_heads; a multiple of it: value heads, gdn_v_heads / gdn_heads sharing a q and k (GVA, Qwen3.5)
    conv_size: int = 4                  # short conv taps; 1: a per-channel scale before the SiLU; 0: no conv, SiLU only
    gdn_output_gate: bool = True        # False: the GDN output is RMSNorm'd without the silu(g_proj x) gate
    rope_base: float = 10000.0
    logit_softcap: float = 30.0
    unet_skips: bool = True             # encoder/decoder skip connections, as in the challenge baseline
    tied_embed_init_std: float = 0.005
    bf16_residual: bool = True          # under bf16 autocast the residual stream is bf16 (the challenge's models are bf16)
    kernel: str = "auto"                # auto | fla | torch   (auto: fla on CUDA, torch elsewhere)
    fused_mlp: bool = True              # with kernel fla, in training: the MLP's two Triton GEMMs with ReLU^2 inside
    chunk_size: int = 64

@dataclass
class DataConfig:
    name: str = "synthetic_sp8192"
    train_files: str = "data/datasets/synthetic_sp8192/synthetic_train_*.bin"
    val_files: str = "data/datasets/synthetic_sp8192/synthetic_val_*.bin"
    tokenizer_path: str = "data/tokenizers/synthetic_8192_bpe.model"
    meta_path: str = ""                 # meta.json of the build; default: beside the train shards, if present

@dataclass
class TrainConfig:
    seed: int = 1337
    seq_len: int = 2048
    global_batch_tokens: int = 786432   # per optimizer step, over all ranks and accumulation steps
    micro_batch_seqs: int = 48          # sequences per rank per forward/backward
    max_wallclock_seconds: float = 600.0
    export_reserve_seconds: float = 12.0  # subtracted from the clock for calibration that reads train data
    max_steps: int = 0                  # 0: train until the clock runs out
    schedule: str = "wallclock"         # wallclock | steps  (LR warmdown as a fraction of time or of max_steps)
    warmdown_frac: float = 0.667
    warmup_steps: int = 20              # compile/kernel warm-up steps, rolled back before the clock starts
    matrix_lr: float = 0.02
    embed_lr: float = 0.03
    scalar_lr: float = 0.02
    muon_momentum: float = 0.99
    muon_momentum_start: float = 0.92
    muon_momentum_warmup_steps: int = 1500
    muon_weight_decay: float = 0.085
    muon_ns_steps: int = 5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_eps: float = 1e-8
    grad_clip_norm: float = 0.3
    ema_decay: float = 0.997            # 0 disables the EMA of weights
    compile: str = "auto"               # auto (whole on CUDA, off on CPU) | regions | whole | off
    log_every: int = 50                 # log steps are the only steps that synchronise with the host
    val_every: int = 0                  # 0: validate only at the end
    grad_split_every: int = 0           # 0: off

@dataclass
class EvalConfig:
    seq_len: int = 0                    # 0: train.seq_len
    batch_seqs: int = 32
    modes: list = field(default_factory=lambda: ["plain"])  # plain | sliding | stateful
    stride: int = 64                    # sliding: each scored token sees seq_len - stride tokens of context
    kv_window: int = 0                  # stateful: attention keeps this many past tokens (0: eval seq_len)

@dataclass
class ExportConfig:
    enabled: bool = False
    matrix_bits: int = 6
    embed_bits: int = 8
    matrix_clip_k: float = 15.0         # SDClip: scale = k * std(row) / clip range
    embed_clip_k: float = 20.0
    keep_float_max_numel: int = 65536   # tensors this small stay fp16
    group_bits: list = field(default_factory=list)  # ["gdn.k:8", "mlp:5"]: matrix bits of a gradient-split type or leaf
    gptq_block: int = 128
    gptq_damp: float = 0.01
    act_order: bool = True
    calib_source: str = "train"         # train (inside the training clock) | self (self-generated text)
    calib_seqs: int = 64
    calib_seq_len: int = 0              # 0: train.seq_len
    compressors: list = field(default_factory=lambda: ["brotli", "lzma", "zstd"])

@dataclass
class RunConfig:
    run_id: str = ""                    # empty: generated on rank 0 and shared with all ranks
    log_dir: str = "logs"
    wandb_mode: str = "disabled"        # disabled | offline | online
    wandb_project: str = "gdn-hybrid"
    wandb_group: str = ""
    save_model: bool = True             # logs/<run_id>.model.pt: the trained weights, written before eval and export

@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    run: RunConfig = field(default_factory=RunConfig)

COMPRESSORS = {"brotli": "brotli", "lzma": "lzma", "zstd": "zstandard"}  # name -> module; the artifact stores its index
CHOICES = {"model.kernel": ("auto", "fla", "torch"), "train.schedule": ("wallclock", "steps"),
           "train.compile": ("auto", "regions", "whole", "off"), "export.calib_source": ("train", "self"),
           "run.wandb_mode": ("disabled", "offline", "online")}
RANGE_TESTS = {"> 0": lambda v: v > 0, "in [0, 1)": lambda v: 0 <= v < 1, "in [0, 1]": lambda v: 0 <= v <= 1,
               "in 2..8": lambda v: 2 <= v <= 8, ">= 0": lambda v: v >= 0}  # ">= 0": every number not in RANGES
RANGES = {key: rule for rule, keys in {"> 0": "model.vocab_size model.model_dim model.num_heads model.num_kv_heads model.mlp_mult "
          "model.gdn_heads model.gdn_head_dim model.gdn_expand_v model.chunk_size model.rope_base "
          "model.logit_softcap train.seq_len train.global_batch_tokens train.micro_batch_seqs train.muon_ns_steps train.adam_eps "
          "train.max_wallclock_seconds train.log_every eval.batch_seqs export.matrix_clip_k export.embed_clip_k export.gptq_block export.calib_seqs",
          "in [0, 1)": "train.muon_momentum train.muon_momentum_start train.adam_beta1 train.adam_beta2 train.ema_decay",
          "in [0, 1]": "train.warmdown_frac", "in 2..8": "export.matrix_bits export.embed_bits"}.items() for key in keys.split()}

def config_from_dict(cls, d: dict, where: str = ""):
    """Build a dataclass from a nested dict, rejecting unknown keys and wrongly typed values."""
    if not isinstance(d, dict):
        raise ValueError(f"config {where or 'root'}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if unknown := sorted(set(d) - set(fields)):
        raise ValueError(f"unknown config key(s) {', '.join(where + k for k in unknown)}; "
                         f"valid keys under '{where or 'root'}': {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in d.items():
        default, key = getattr(cls(), name), where + name
        if dataclasses.is_dataclass(default):
            kwargs[name] = config_from_dict(type(default), value, key + ".")
            continue
        expected = type(default)
        if (expected, type(value)) in ((float, int), (list, list), (list, tuple)):  # YAML's 1 for 1.0; a tuple for a list
            value = expected(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"config {key}: expected {expected.__name__}, got {value!r}")
        if key in CHOICES and value not in CHOICES[key]:
            raise ValueError(f"config {key}: {value!r} is not one of {', '.join(CHOICES[key])}")
        if expected in (int, float) and key != "train.seed" and not RANGE_TESTS[rule := RANGES.get(key, ">= 0")](value):
            raise ValueError(f"config {key}: {value!r} must be {rule}")
        kwargs[name] = value
    return cls(**kwargs)

def validate_config(cfg: Config) -> Config:
    m, t, e = cfg.model, cfg.train, cfg.eval
    if not m.layout or set(m.layout) - {"G", "A"}:
        raise ValueError(f"config model.layout: {m.layout!r} must be a non-empty string of G and A")
    if m.model_dim % m.num_heads or m.num_heads % m.num_kv_heads or (m.model_dim // m.num_heads) % 2:
        raise ValueError("config model: model_dim must split into num_heads even-sized heads, and num_heads must be a multiple of num_kv_heads")
    if (m.gdn_head_dim * m.gdn_expand_v) % 1:
        raise ValueError("config model.gdn_expand_v: gdn_head_dim * gdn_expand_v must be an integer")
    if m.gdn_v_heads % m.gdn_heads:
        raise ValueError(f"config model.gdn_v_heads: {m.gdn_v_heads} must be 0 (= gdn_heads) or a multiple of model.gdn_heads ({m.gdn_heads})")
    if t.global_batch_tokens % t.seq_len:
        raise ValueError(f"config train.global_batch_tokens ({t.global_batch_tokens}) must be a multiple of train.seq_len ({t.seq_len})")
    if t.schedule == "steps" and t.max_steps <= 0:
        raise ValueError("config train.schedule=steps needs train.max_steps > 0")
    if not e.modes or set(e.modes) - {"plain", "sliding", "stateful"}:
        raise ValueError(f"config eval.modes: {e.modes} must be a non-empty subset of plain, sliding, stateful")
    pairs = [str(item).partition(":") for item in cfg.export.group_bits]
    if bad := [g + c + b for g, c, b in pairs if g not in QUANT_GROUPS or not b.isdigit() or not 2 <= int(b) <= 8 or [p[0] for p in pairs].count(g) > 1]:
        raise ValueError(f"config export.group_bits: {bad[0]!r} must be 'group:bits', bits in 2..8, each group once; groups: {', '.join(QUANT_GROUPS)}")
    if cfg.export.enabled and not cfg.export.compressors:
        raise ValueError("config export.compressors: empty; export needs at least one of " + ", ".join(COMPRESSORS))
    for name in cfg.export.compressors if cfg.export.enabled else []:
        if name not in COMPRESSORS or importlib.util.find_spec(COMPRESSORS[name]) is None:
            raise ValueError(f"config export.compressors: {name!r} is not one of {', '.join(COMPRESSORS)} "
                             f"with its module installed; install it or drop it from export.compressors")
    if e.stride <= 0 or e.stride > (e.seq_len or t.seq_len):
        raise ValueError(f"config eval.stride: {e.stride} must be in 1..eval seq_len")
    if training_budget(cfg) <= 0:
        raise ValueError(f"config train.max_wallclock_seconds: {t.max_wallclock_seconds} leaves no training time after "
                         f"train.export_reserve_seconds={t.export_reserve_seconds} (calibration on train data)")
    return cfg

def training_budget(cfg: Config) -> float:  # the clock less the reserve for calibration that reads train data inside it
    return cfg.train.max_wallclock_seconds - cfg.train.export_reserve_seconds * (cfg.export.enabled and cfg.export.calib_source == "train")

def load_config(argv: list[str]) -> Config:
    """Compose conf/ with Hydra's compose API (or load a resolved --config file), apply overrides."""
    from omegaconf import OmegaConf
    overrides = list(argv)
    if overrides[:1] == ["--config"]:
        if len(overrides) < 2:
            raise ValueError("--config needs a path to a resolved config YAML")
        path, overrides = overrides[1], overrides[2:]
        base = OmegaConf.load(path)  # a missing file raises FileNotFoundError naming it
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} must look like key=value")
            key, value = item.split("=", 1)
            check_override_key(key)
            OmegaConf.update(base, key, OmegaConf.from_dotlist([f"v={value}"]).v if value else "", merge=False)  # as Hydra
        raw = OmegaConf.to_container(base, resolve=True)
    else:
        conf_dir = Path(__file__).resolve().parent / "conf"
        if not conf_dir.is_dir():
            raise FileNotFoundError(f"no conf/ directory beside {__file__}; pass --config resolved.yaml")
        for item in overrides:
            key = item.split("=", 1)[0].lstrip("+~")
            if "." in key: check_override_key(key)
        from hydra import compose, initialize_config_dir
        from hydra.core.config_store import ConfigStore
        ConfigStore.instance().store(name="schema", node=Config)
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            raw = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    try:
        return validate_config(config_from_dict(Config, raw))
    except ValueError as err:  # name the file the values came from
        raise ValueError(f"{path}{' + overrides' * bool(overrides)}: {err}") if argv[:1] == ["--config"] else err

def check_override_key(key: str) -> None:
    node, where = Config(), ""
    for part in key.split("."):
        names = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
        if part not in names:
            raise ValueError(f"unknown config key {key!r}: '{part}' is not one of "
                             f"{', '.join(sorted(names)) or '(no sub-keys)'} under '{where or 'root'}'")
        node, where = getattr(node, part), where + part + "."

# ----------------------------------------------------------------------------------------------------
# DISTRIBUTED + LOGGING: torchrun sets RANK/WORLD_SIZE; rank 0 writes the log that reproduces the run.

@dataclass
class Dist:
    rank: int; world: int; local_rank: int  # noqa: E702
    device: torch.device
    master = property(lambda self: self.rank == 0)

def init_distributed() -> Dist:
    rank, world, local_rank = (int(os.environ.get(k, v)) for k, v in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    if torch.cuda.is_available():
        torch.cuda.set_device(device := torch.device("cuda", local_rank))
    else:
        device = torch.device("cpu")
        torch.set_flush_denormal(True)  # strongly decayed GDN states underflow to denormals, 50x slower on CPU
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return Dist(rank, world, local_rank, device)

def all_reduce(t: torch.Tensor, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized(): dist.all_reduce(t, op=op)
    return t
def synchronize(d: Dist) -> None:
    torch.cuda.synchronize(d.device) if d.device.type == "cuda" else None
def autocast(d: Dist):
    return torch.autocast("cuda", dtype=torch.bfloat16) if d.device.type == "cuda" else torch.autocast("cpu", enabled=False)

class Logger:
    """key:value lines to the console and logs/<run_id>.txt (rank 0 only), flushed line by line."""
    def __init__(self, cfg: Config, d: Dist):
        self.d, self.path, self.wandb = d, None, None
        if not d.master:
            return
        os.makedirs(cfg.run.log_dir, exist_ok=True)
        self.path = os.path.join(cfg.run.log_dir, f"{cfg.run.run_id}.txt")
        if os.path.exists(self.path):  # never append to (or overwrite the results of) another run
            raise FileExistsError(f"{self.path} exists: run.run_id={cfg.run.run_id} is taken; pick another or leave it empty")
        self.file = open(self.path, "x", encoding="utf-8")
        sys.excepthook = lambda *exc: (self.file.closed or self("".join(traceback.format_exception(*exc)), console=False), sys.__excepthook__(*exc))
        if cfg.run.wandb_mode != "disabled":
            import wandb
            self.wandb = wandb.init(project=cfg.run.wandb_project, group=cfg.run.wandb_group or None,
                                    name=cfg.run.run_id, mode=cfg.run.wandb_mode, config=dataclasses.asdict(cfg), dir=cfg.run.log_dir)
    def __call__(self, msg: str, console: bool = True) -> None:
        if self.d.master:
            print(msg, flush=True) if console else None
            print(msg, file=self.file, flush=True)
    def metrics(self, head: str, step: int | None = None, **values) -> None:
        self(" ".join([head] * bool(head) + [f"{k}:{v:.8f}" if isinstance(v, float) and k.startswith(("val_", "entropy"))
                                            else f"{k}:{v:.4f}" if isinstance(v, float) else f"{k}:{v}" for k, v in values.items()]))
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in values.items() if isinstance(v, (int, float))}, step=step)
    def summary(self, results: dict) -> None:
        if self.wandb is not None:
            self.wandb.summary.update({k: v for k, v in results.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    def close(self) -> None:
        if self.wandb is not None: self.wandb.finish()
        if self.d.master: self.file.close()

def package_versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "fla", "sentencepiece", "numpy", "hydra"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # not installed, or (FLA) not importable on this machine
            out[mod] = None
    return out

def environment_report(d: Dist) -> str:
    lines = [" ".join(f"{k}:{v}" for k, v in package_versions().items()) + f" platform:{platform.platform()}"
             f" fla_cache_results:{os.environ.get('FLA_CACHE_RESULTS')} cpu_threads:{torch.get_num_threads()}"]
    if torch.cuda.is_available():
        lines += [f"gpu{i}:{torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        with contextlib.suppress(Exception):  # no nvidia-smi: the device names above still say what ran
            lines.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=20).stdout)
    return "\n".join(lines)

# ----------------------------------------------------------------------------------------------------
# DATA: challenge shards (256 int32 header words, then uint16 tokens), read lazily; each rank reads only
# its own disjoint sequences of every global batch, so the batch is the same for any world size.

SHARD_MAGIC, SHARD_VERSION, SHARD_HEADER_WORDS = 20240520, 1, 256
BOS_ID = 1  # every document starts with BOS

def read_shard_header(path: str) -> int:
    """Validate a shard's header and size; return its token count."""
    size = os.path.getsize(path)
    if size < SHARD_HEADER_WORDS * 4:
        raise ValueError(f"shard {path}: truncated: {size} bytes is shorter than the {SHARD_HEADER_WORDS * 4}-byte header")
    header = np.fromfile(path, dtype="<i4", count=SHARD_HEADER_WORDS)
    if header[0] != SHARD_MAGIC:
        raise ValueError(f"shard {path}: bad magic {header[0]} (expected {SHARD_MAGIC}); not a challenge shard")
    if header[1] != SHARD_VERSION:
        raise ValueError(f"shard {path}: unsupported version {header[1]} (expected {SHARD_VERSION})")
    num_tokens, expected = int(header[2]), SHARD_HEADER_WORDS * 4 + 2 * int(header[2])
    if num_tokens < 0 or size != expected:
        raise ValueError(f"shard {path}: header says {num_tokens} tokens, so {expected} bytes, "
                         f"but the file has {size} bytes (truncated or corrupt)")
    return num_tokens

class TokenStream:
    """The concatenation of all shards as one virtual array, read by global position (wrapping around); every read
    is checked against the vocabulary (on the host, where the batch is anyway: no device sync)."""
    def __init__(self, pattern: str, vocab_size: int = 1 << 16):
        if not (files := sorted(glob.glob(pattern))):
            raise FileNotFoundError(f"no shards match {pattern!r} (build them: see README, 'Data')")
        self.files, self.vocab_size = files, vocab_size
        self.shards = [np.memmap(f, dtype="<u2", mode="r", offset=SHARD_HEADER_WORDS * 4, shape=(read_shard_header(f),)) for f in files]
        self.starts = np.cumsum([0] + [len(s) for s in self.shards])
        self.total = int(self.starts[-1])
    def read(self, start: int, n: int) -> np.ndarray:
        out, start = [], start % self.total
        while n > 0:
            i = int(np.searchsorted(self.starts, start, side="right")) - 1
            offset = start - int(self.starts[i])
            out.append(piece := self.shards[i][offset:offset + n])
            if piece.size and (top := int(piece.max())) >= self.vocab_size:
                raise ValueError(f"shard {self.files[i]}: token id {top} at token {offset + int(piece.argmax())} >= model.vocab_size={self.vocab_size}")
            n, start = n - len(piece), (start + len(piece)) % self.total
        return np.concatenate(out).astype(np.int64)

class TrainLoader:
    """Global batch = `global_batch_tokens` consecutive tokens cut into sequences; sequence j of a step goes to
    micro step j // (world * micro), rank (j // micro) % world, so the union over ranks never depends on world."""
    def __init__(self, pattern: str, cfg: TrainConfig, d: Dist, vocab_size: int = 1 << 16):
        self.stream, self.d, self.seq_len, self.micro = TokenStream(pattern, vocab_size), d, cfg.seq_len, cfg.micro_batch_seqs
        seqs = cfg.global_batch_tokens // cfg.seq_len
        if seqs % (d.world * self.micro):
            raise ValueError(f"config: {seqs} sequences per step do not split into {d.world} ranks x "
                             f"train.micro_batch_seqs={self.micro}; change global_batch_tokens or micro_batch_seqs")
        self.accum_steps, self.step_tokens, self.position = seqs // (d.world * self.micro), cfg.global_batch_tokens, 0
    def next_batch(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = []
        for m in range(self.accum_steps):
            first_seq = (m * self.d.world + self.d.rank) * self.micro
            t = torch.from_numpy(self.stream.read(self.position + first_seq * self.seq_len, self.micro * self.seq_len + 1))
            if self.d.device.type == "cuda":
                t = t.pin_memory().to(self.d.device, non_blocking=True)
            batch.append((t[:-1].view(self.micro, self.seq_len), t[1:].view(self.micro, self.seq_len)))
        self.position += self.step_tokens
        return batch

def load_val_tokens(pattern: str, device: torch.device, vocab_size: int = 1 << 16) -> torch.Tensor:
    stream = TokenStream(pattern, vocab_size)
    return torch.from_numpy(stream.read(0, stream.total)).to(device)
def load_data_meta(cfg: DataConfig) -> dict:
    """The build's meta.json (entropy floor of synthetic data, token counts; optional unless data.meta_path is set),
    checked against data.tokenizer_path: bits per byte counted with another tokenizer's pieces would be wrong."""
    path = cfg.meta_path or os.path.join(os.path.dirname(cfg.train_files), "meta.json")
    meta = json.loads(Path(path).read_text()) if cfg.meta_path or os.path.exists(path) else {}
    if (want := meta.get("tokenizer_sha256")) and os.path.exists(cfg.tokenizer_path) and \
            want != (sha := hashlib.sha256(Path(cfg.tokenizer_path).read_bytes()).hexdigest()):
        raise ValueError(f"data.tokenizer_path {cfg.tokenizer_path} (sha256 {sha[:12]}...) is not the tokenizer {path} records "
                         f"(tokenizer_sha256 {want[:12]}...): bits per byte would be counted with the wrong pieces")
    return meta

# ----------------------------------------------------------------------------------------------------
# MODEL: blocks of (mixer, MLP) with pre-RMSNorm; mixer = Gated DeltaNet or GQA softmax attention.
# Every mixer takes an optional carried state and can return its final state (stateful eval, frozen context).

def rms_norm(x: torch.Tensor, eps: float | None = None) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),), eps=eps)
def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(x.float().pow(2).sum(-1, keepdim=True) + 1e-6).to(x.dtype)  # FLA's l2norm convention

def conv_window(x: torch.Tensor, state: torch.Tensor | None, W: int) -> torch.Tensor:
    """The W - 1 inputs before x [B, T, D], then x: zeros, or a carried state's [B, D, W] (FLA's layout; slot 0 unread)."""
    prev = x.new_zeros(x.shape[0], max(W - 1, 0), x.shape[2]) if state is None else state[..., 1:].transpose(1, 2).to(x.dtype)
    return torch.cat([prev, x], dim=1)

def conv_tail(x: torch.Tensor, state: torch.Tensor | None, W: int) -> torch.Tensor:  # the state after x: last W inputs
    padded = conv_window(x[:, max(x.shape[1] - W, 0):], state, W)
    return padded[:, padded.shape[1] - W:].mT.contiguous()
def causal_conv(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None):
    """Depthwise causal conv + SiLU as W shifted multiply-adds in fp32 (W = 0: SiLU only), and the state after x."""
    T, W = x.shape[1], weight.shape[1]
    padded = conv_window(x, state, W)
    y = sum(padded[:, j:j + T].float() * weight[:, j].float() for j in range(W)) if W else x.float()
    return F.silu(y).to(x.dtype), conv_tail(x, state, W)

def short_conv_qkv(x: torch.Tensor, weight: torch.Tensor, state: torch.Tensor | None, dims: tuple[int, int, int]):
    """Plain-torch short conv over q|k|v, split into heads, q and k L2-normalised: the reference for the kernel."""
    (B, T), (H, K, V) = x.shape[:2], dims
    y, new_state = causal_conv(x, weight, state)
    q, k, v = y.split([H * K, H * K, H * V], dim=-1)
    return l2_normalize(q.reshape(B, T, H, K)), l2_normalize(k.reshape(B, T, H, K)), v.reshape(B, T, H, V), new_state

if triton is not None:
    # Programs: (K-wide channel block = one q/k head: its L2 norm is a row reduction, rows, sequence); state rows < 0
    @triton.jit
    def _conv_input(x, s0, i_b, rows, c, T, sxb, sxt, D, W: tl.constexpr, HAS_STATE: tl.constexpr):
        m_c = (c < D)[None, :]
        xs = tl.load(x + i_b * sxb + rows[:, None] * sxt + c[None, :], mask=((rows >= 0) & (rows < T))[:, None] & m_c,
                     other=0.0).to(tl.float32)
        if HAS_STATE:  # state slot W + r holds the input at row r, for 1 - W <= r < 0
            xs += tl.load(s0 + i_b * D * W + c[None, :] * W + (W + rows)[:, None],
                          mask=((rows < 0) & (rows > -W))[:, None] & m_c, other=0.0).to(tl.float32)
        return xs
    @triton.jit
    def short_conv_kernel(x, w, s0, q, k, v, k2, du, T, sxb, sxt, sdb, sdt, H: tl.constexpr, K: tl.constexpr,
                          V: tl.constexpr, W: tl.constexpr, BT: tl.constexpr, HAS_STATE: tl.constexpr,
                          BACKWARD: tl.constexpr, HAS_K2: tl.constexpr, G: tl.constexpr):
        """Forward: conv + SiLU (+ L2 norm for q and k) into q, k, v. BACKWARD: q, k, v hold their gradients (k's in
        two parts k + k2 with HAS_K2; q's and k's per value head, G a head, summed here), and the gradient at the
        pre-activation u (recomputed from x) goes to du (strides sdb, sdt); W = 0: no conv, u = x."""
        i_d, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        D, rows, c = 2 * H * K + H * V, i_t * BT + tl.arange(0, BT), i_d * K + tl.arange(0, K)
        u = _conv_input(x, s0, i_b, rows, c, T, sxb, sxt, D, 1, False) if W == 0 else tl.zeros((BT, K), tl.float32)
        for j in tl.static_range(W):
            w_j = tl.load(w + c * W + j, mask=c < D, other=0.0).to(tl.float32)
            u += _conv_input(x, s0, i_b, rows - (W - 1) + j, c, T, sxb, sxt, D, W, HAS_STATE) * w_j[None, :]
        sig = tl.sigmoid(u)
        y, m = u * sig, (rows < T)[:, None] & (c < D)[None, :]
        # sequence offsets go into the base pointers (int64 scalars) so that tile offsets stay int32
        pq, pk, pv = q + i_b * T * (H * K), k + i_b * T * (H * K) - H * K, v + i_b * T * (H * V) - 2 * H * K
        oq, ov = rows[:, None] * (H * K) + c[None, :], rows[:, None] * (H * V) + c[None, :]
        if BACKWARD:  # (loads and stores stay in per-tensor branches: a pointer chosen by branch made it slower)
            g, bg, og = tl.zeros_like(u), i_b * T * (H * G * K), rows[:, None] * (H * G * K) + (i_d % H) * (G * K) + tl.arange(0, K)[None, :]
            for j in tl.static_range(G):  # GVA: head i_d % H's gradient from each of its G value heads
                if i_d < H:
                    g += tl.load(q + bg + og + j * K, mask=m, other=0.0).to(tl.float32)
                elif i_d < 2 * H:
                    g += tl.load(k + bg + og + j * K, mask=m, other=0.0).to(tl.float32)
                    if HAS_K2:
                        g += tl.load(k2 + bg + og + j * K, mask=m, other=0.0).to(tl.float32)
            if i_d >= 2 * H:
                g = tl.load(pv + ov, mask=m, other=0.0).to(tl.float32)
            if i_d < 2 * H:  # through the L2 norm: (g - n (n . g)) / |y| with n = y / |y|
                rstd = tl.rsqrt(tl.sum(y * y, 1) + 1e-6)[:, None]
                g = (g - y * rstd * tl.sum(y * rstd * g, 1)[:, None]) * rstd
            tl.store(du + i_b * sdb + rows[:, None] * sdt + c[None, :], (g * sig * (1 + u * (1 - sig))).to(
                du.dtype.element_ty), mask=m)
        else:
            if i_d < 2 * H:
                y = y * tl.rsqrt(tl.sum(y * y, 1) + 1e-6)[:, None]
            if i_d < H:
                tl.store(pq + oq, y.to(q.dtype.element_ty), mask=m)
            elif i_d < 2 * H:
                tl.store(pk + oq, y.to(k.dtype.element_ty), mask=m)
            else:
                tl.store(pv + ov, y.to(v.dtype.element_ty), mask=m)
    @triton.jit
    def short_conv_dx_kernel(du, x, w, s0, dx, ds, dw_part, T, sxb, sxt, sdb, sdt, D, TILES: tl.constexpr, W: tl.constexpr,
                             BW: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr, HAS_STATE: tl.constexpr, WANT_DSTATE: tl.constexpr):
        """Input t feeds pre-activations t .. t + W - 1 through taps W - 1 .. 0: dx[t] = sum_m w[W-1-m] du[t+m], tap W-1-m
        of dw gains sum_t du[t+m] x[t]. TILES row tiles per program (+1 of carried rows < 0 for the first with a state:
        their dx is the state's gradient ds); dw goes to dw_part, summed by the caller. dx: a column slice (sdb, sdt). The W
        shifted du tiles load as one block, and dw is summed over rows once per program, not per tap and tile."""
        i_d, i_s, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
        c, m = i_d * BD + tl.arange(0, BD), tl.arange(0, BW)[:, None, None]  # shift m: du row t + m meets tap W-1-m
        on = (m < W) & (c < D)[None, None, :]
        w_m = tl.load(w + c[None, None, :] * W + (W - 1 - m), mask=on, other=0.0).to(tl.float32)
        dw = tl.zeros((BW, BT, BD), tl.float32)  # dw's products per row, summed over rows once, at the end
        for i_t in range(i_s * TILES - (i_s == 0).to(tl.int32) * HAS_STATE, (i_s + 1) * TILES):
            rows = i_t * BT + tl.arange(0, BT)
            xs, r = _conv_input(x, s0, i_b, rows, c, T, sxb, sxt, D, W, HAS_STATE), rows[None, :, None] + m
            g = tl.load(du + i_b * T * D + r * D + c[None, None, :], mask=on & (r >= 0) & (r < T), other=0.0).to(tl.float32)
            acc, dw = tl.sum(g * w_m, 0), dw + g * xs[None, :, :]
            tl.store(dx + i_b * sdb + rows[:, None] * sdt + c[None, :], acc.to(dx.dtype.element_ty),
                     mask=((rows >= 0) & (rows < T))[:, None] & (c < D)[None, :])
            if WANT_DSTATE:  # state slot W + r holds the input at row r, for 1 - W <= r < 0
                tl.store(ds + i_b * D * W + c[None, :] * W + (W + rows)[:, None], acc, mask=((rows < 0) & (rows > -W))[:, None] & (c < D)[None, :])
        part = dw_part + (i_b * tl.num_programs(1) + i_s) * D * W
        tl.store(part + c[None, None, :] * W + (W - 1 - m), tl.sum(dw, 1)[:, None, :], mask=on)

class ShortConv:
    """Causal conv + SiLU over q|k|v and each q and k head's L2 norm in one pass, into contiguous [B, T, heads, dim] q, k,
    v for FLA; the backward recomputes the pre-activation (a pass to its gradient du, one from du to dx, dw)."""
    ROWS, WARPS, DU_ROWS, DU_WARPS, DX_ROWS, DX_TILES, DX_WARPS = 32, 1, 32, 2, 32, 8, 2  # on an H200: scripts/short_conv_bench.py
    @staticmethod
    def conv_pass(x, weight, state, dims, qkv, du=None, k2=None):  # forward, or (given du) backward to du
        (B, T, D), (H, K, V), W, state = x.shape, dims, weight.shape[1], state if weight.shape[1] else None
        rows, warps = (ShortConv.ROWS, ShortConv.WARPS) if du is None else (ShortConv.DU_ROWS, ShortConv.DU_WARPS)
        short_conv_kernel[(triton.cdiv(D, K), triton.cdiv(T, rows), B)](
            x, weight if W else x, x if state is None else state, *qkv, x if k2 is None else k2, x if du is None else du,
            T, x.stride(0), x.stride(1), *(x if du is None else du).stride()[:2], H=H, K=K, V=V, W=W,
            BT=rows, HAS_STATE=state is not None, BACKWARD=du is not None, HAS_K2=k2 is not None, G=qkv[0].shape[2] // H, num_warps=warps)
    @staticmethod
    def forward(x, weight, state, dims):
        """x [B, T, q|k|v] (rows may be strided), weight [q|k|v, W], state None or [B, q|k|v, W] -> q, k, v."""
        (B, T, _), (H, K, V) = x.shape, dims
        if K & (K - 1) or K < 16 or x.stride(2) != 1:
            raise ValueError(f"model.gdn_head_dim={K}: the Triton short conv needs a power of two >= 16 (and x.stride(2) == 1)")
        qkv = x.new_empty(B, T, H, K), x.new_empty(B, T, H, K), x.new_empty(B, T, H, V)
        ShortConv.conv_pass(x, weight, state, dims, qkv)
        return qkv
    @staticmethod
    def backward(x, weight, state, dims, grads, dx, want_dstate: bool, dk2=None):
        """Gradients of q, k (+ dk2), v -> dx, written into the given tensor or column slice; returns dweight, dstate."""
        (B, T, D), W, (rows, tiles) = x.shape, weight.shape[1], (ShortConv.DX_ROWS, ShortConv.DX_TILES)
        du, grads = dx if W == 0 else x.new_empty(B, T, D), [g.contiguous() for g in grads]  # no conv: du is dx
        ShortConv.conv_pass(x, weight, state, dims, grads, du, None if dk2 is None else dk2.contiguous())
        dstate = x.new_zeros(B, D, W, dtype=torch.float32) if state is not None and want_dstate else None  # slot 0: 0
        if W == 0:
            return torch.zeros_like(weight), None if dstate is None else dstate.to(state.dtype)
        splits = triton.cdiv(triton.cdiv(T, rows), tiles)
        dw_part = torch.empty(B * splits, D, W, device=x.device, dtype=torch.float32)
        short_conv_dx_kernel[(triton.cdiv(D, 64), splits, B)](
            du, x, weight, x if state is None else state, dx, dw_part if dstate is None else dstate, dw_part, T,
            x.stride(0), x.stride(1), dx.stride(0), dx.stride(1), D, TILES=tiles, W=W, BW=triton.next_power_of_2(W),
            BT=rows, BD=64, HAS_STATE=state is not None, WANT_DSTATE=dstate is not None, num_warps=ShortConv.DX_WARPS)
        return dw_part.sum(0).to(weight.dtype), None if dstate is None else dstate.to(state.dtype)

def gated_delta_rule_torch(q, k, v, g, beta, scale: float, initial_state=None, chunk_size: int = 64):
    """Chunked gated delta rule in fp32, FLA's chunk_gated_delta_rule math: S_t = exp(g_t) (I - beta_t k_t k_t^T)
    S_{t-1} + beta_t k_t v_t^T, o_t = scale * S_t^T q_t. q, k [B, T, H, K] (L2-normalised), v [B, T, HV, V], g (log
    decay) and beta [B, T, HV], state [B, HV, K, V]. Returns o [B, T, HV, V] and the final state."""
    (B, T, H, K), (HV, V) = q.shape, v.shape[2:]
    if HV != H: q, k = q.repeat_interleave(HV // H, dim=2), k.repeat_interleave(HV // H, dim=2)
    C, pad, N = chunk_size, (-T) % chunk_size, -(-T // chunk_size)
    def chunks(x):  # [B, T, HV, ...] -> [B, HV, N, C, ...]; zero padding is inert (beta = 0, g = 0)
        x = x.float().transpose(1, 2)
        x = F.pad(x, (0, 0, 0, pad) if x.dim() == 4 else (0, pad))
        return x.reshape(B, HV, N, C, *x.shape[3:])

    q, k, v, g, beta = chunks(q) * scale, chunks(k), chunks(v), chunks(g), chunks(beta)
    G = g.cumsum(-1)  # log decay from the chunk start, inclusive
    inclusive = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (G.unsqueeze(-1) - G.unsqueeze(-2)).masked_fill(~inclusive, float("-inf")).exp()  # exp(G_t - G_s), s<=t
    # Inside a chunk the delta rule's written values U solve (I + A) U = beta V - beta exp(G) K S0 with A strictly
    # lower triangular: one triangular solve gives U = U0 - Wk S0 for whatever state S0 the chunk starts from.
    A = (beta.unsqueeze(-1) * (k @ k.transpose(-1, -2)) * decay).tril(-1)
    rhs = torch.cat([beta.unsqueeze(-1) * v, (beta * G.exp()).unsqueeze(-1) * k], dim=-1)
    solved = torch.linalg.solve_triangular(torch.eye(C, device=q.device) + A, rhs, upper=False, unitriangular=True)
    U0, Wk = solved[..., :V], solved[..., V:]
    scores = (q @ k.transpose(-1, -2)) * decay
    q_decayed, k_to_end = q * G.exp().unsqueeze(-1), k * (G[..., -1:] - G).exp().unsqueeze(-1)
    S = q.new_zeros(B, HV, K, V) if initial_state is None else initial_state.float()
    out = []
    for n in range(N):
        U = U0[:, :, n] - Wk[:, :, n] @ S
        out.append(q_decayed[:, :, n] @ S + scores[:, :, n] @ U)
        S = S * G[:, :, n, -1].exp()[..., None, None] + k_to_end[:, :, n].transpose(-1, -2) @ U
    return torch.stack(out, dim=2).reshape(B, HV, N * C, V)[:, :, :T].transpose(1, 2), S

def fla_kernels():  # FLA's kernel modules: chunk_delta_h, chunk_o, gate, chunk_fwd, gdn gate, wy_fast, cumsum
    return [importlib.import_module("fla.ops." + m) for m in ("common.chunk_delta_h", "common.chunk_o", "common.gate",
            "gated_delta_rule.chunk_fwd", "gated_delta_rule.gate", "gated_delta_rule.wy_fast", "utils.cumsum")]

def fla_grouped_bwd(chunk_o, wy_fast, q, k, v, v_new, beta, g, A, w, h, do, dh, dv, scale: float, C: int):
    """GVA: FLA's chunk_bwd_dqkwg and prepare_wy_repr_bwd kernels launched as their wrappers do, less the wrappers' ATen
    sums of dq and dk over each group of value heads (2.7 ms a step at 2048 on an H100): the conv's backward sums them."""
    (B, T, H, K), HV, V, NT, smem = k.shape, v.shape[2], v.shape[3], -(-k.shape[1] // C), chunk_o.check_shared_mem
    most = 128 if smem("hopper", k.device.index) else 64 if smem("ada", k.device.index) else 32  # FLA's tile caps (Ampere: 64, not its 128)
    (BK, BV), (wK, wV) = ([min(max(triton.next_power_of_2(n), 16), cap) for n in (K, V)] for cap in (most, 64 if smem() else 32))
    dq, dk, dk2, dw, dv2, dbeta, dg2 = *(k.new_empty(B, T, HV, K) for _ in range(3)), *map(torch.empty_like, (w, v, beta, g))
    dg = g.new_empty(-(-K // BK), *g.shape)
    chunk_o.chunk_bwd_kernel_dqkwg[(dg.shape[0] * NT, B * HV)](q=q, k=k, v=v_new, g=g, g_gamma=None, h=h, do=do, dh=dh, dq=dq,
        dk=dk, dw=dw, dv=dv, dg=dg, cu_seqlens=None, chunk_indices=None, scale=scale, B=B, T=T, H=H, HV=HV, K=K, V=V, BT=C, BK=BK,
        BV=BV, STATE_V_FIRST=False)
    wy_fast.prepare_wy_repr_bwd_kernel[(NT, B * HV)](k=k, v=v, beta=beta, g=g, A=A, dw=dw, du=dv, dk=dk2, dv=dv2, db=dbeta,
        dg=dg2, cu_seqlens=None, chunk_indices=None, T=T, H=H, HV=HV, K=K, V=V, BT=C, BK=wK, BV=wV)
    return dq, dk, dw, dg.sum(0), dk2, dv2, dbeta, dg2

GDN_OPS, Tensor = "gdn_" + __name__.replace(".", "_"), torch.Tensor  # op namespace per import name (bench.py too)
GDN_OP_ARGS = dict(mutates_args=(), tags=[torch.Tag.flexible_layout])  # inductor may pass P row-padded: no 300 MB copy

@torch.library.custom_op(GDN_OPS + "::core_fwd", **GDN_OP_ARGS)
def gdn_core_fwd(P: Tensor, conv_weight: Tensor, A_log: Tensor, dt_bias: Tensor, conv_state: Tensor | None,
                 S0: Tensor | None, H: int, K: int, V: int, HV: int, C: int, want_state: bool) -> list[Tensor]:
    """GDN on CUDA, P = [q|k|v|a|b] -> [o, S (empty unless want_state), then q, k, v, beta, g, A, w, h, v_new kept for the
    backward, which FLA's own Function recomputes]: the Triton short conv, then FLA's chunk kernels (sigmoid(b), gate g
    inside them). HV value heads (GVA: FLA maps head i to q, k head i // (HV / H)). A custom op: a GDN block is one graph."""
    chunk_delta_h, chunk_o, beta_gate, chunk_fwd, gate, _, _ = fla_kernels()
    conv_state, S0 = [None if t is None else t.contiguous() for t in (conv_state, S0)]
    x, a, b = P.split([2 * H * K + HV * V, HV, HV], dim=-1)
    q, k, v = ShortConv.forward(x, conv_weight, conv_state, (H, K, HV * V // H))  # v as H groups of HV/H heads
    v = v.view(*v.shape[:2], HV, V)
    beta = beta_gate.fused_beta_sigmoid_fwd(b.contiguous())
    g = gate.gdn_gate_chunk_cumsum(a.contiguous(), A_log, C, scale=1.4426950216, dt_bias=dt_bias)  # FLA's 1/ln 2: log2
    w, u, A = chunk_fwd.chunk_gated_delta_rule_fwd_intra(k=k, v=v, g=g, beta=beta, chunk_size=C)
    h, v_new, S = chunk_delta_h.chunk_gated_delta_rule_fwd_h(k=k, w=w, u=u, g=g, initial_state=S0, output_final_state=want_state, chunk_size=C)
    o = chunk_o.chunk_fwd_o(q=q, k=k, v=v_new, h=h, g=g, scale=K ** -0.5, chunk_size=C)
    return [o, S if want_state else P.new_empty(0), q, k, v, beta, g, A, w, h, v_new]

@gdn_core_fwd.register_fake
def _(P, conv_weight, A_log, dt_bias, conv_state, S0, H, K, V, HV, C, want_state):
    (B, T, _), f32, new = P.shape, torch.float32, lambda *shape, dtype=P.dtype: P.new_empty(shape, dtype=dtype)
    return [new(B, T, HV, V), new(B, HV, K, V, dtype=f32) if want_state else new(0), new(B, T, H, K), new(B, T, H, K),
            new(B, T, HV, V), new(B, T, HV, dtype=f32), new(B, T, HV, dtype=f32), new(B, T, HV, C), new(B, T, HV, K),
            new(B, -(-T // C), HV, K, V), new(B, T, HV, V)]

@torch.library.custom_op(GDN_OPS + "::core_bwd", **GDN_OP_ARGS)
def gdn_core_bwd(do: Tensor, dS: Tensor | None, saved: list[Tensor], conv_state: Tensor | None, S0: Tensor | None,
                 H: int, K: int, V: int, HV: int, C: int, want_dstate: bool) -> list[Tensor]:
    """[dP (written whole: the conv's dx kernel fills its column slice), dconv, dA_log, ddt_bias, dstate, dS0]."""
    P, conv_weight, A_log, dt_bias, q, k, v, beta, g, A, w, h, v_new = saved
    chunk_delta_h, chunk_o, beta_gate, _, gate, wy_fast, cumsum = fla_kernels()
    scale, Dc, do = K ** -0.5, 2 * H * K + HV * V, do.contiguous()
    dv = chunk_o.chunk_bwd_dv_local(q=q, k=k, do=do, g=g, scale=scale, chunk_size=C)
    dS = dS.contiguous() if dS is not None and dS.numel() else None  # eager: may be expanded; compiled: empty if unused
    dh, dS0, dv = chunk_delta_h.chunk_gated_delta_rule_bwd_dhu(q=q, k=k, w=w, do=do, dv=dv, g=g, h0=S0, dht=dS, scale=scale, chunk_size=C)
    if HV == H:
        dq, dk, dw, dg = chunk_o.chunk_bwd_dqkwg(q=q, k=k, v=v_new, w=w, g=g, h=h, dv=dv, do=do, dh=dh, scale=scale, chunk_size=C)
        dk2, dv, dbeta, dg2 = wy_fast.prepare_wy_repr_bwd(k=k, v=v, beta=beta, A=A, dw=dw, du=dv, g=g)
    else:
        dq, dk, dw, dg, dk2, dv, dbeta, dg2 = fla_grouped_bwd(chunk_o, wy_fast, q, k, v, v_new, beta, g, A, w, h, do, dh, dv, scale, C)
    da, dA_log, ddt_bias = gate.gdn_gate_bwd(P[..., Dc:Dc + HV].contiguous(), A_log, dt_bias,
                                             cumsum.chunk_local_cumsum(dg.add_(dg2), C, reverse=True))
    dP = torch.empty_like(P)
    dP[..., Dc:] = torch.cat([da, beta_gate.fused_beta_sigmoid_bwd(P[..., Dc + HV:].contiguous(), dbeta)], dim=-1)
    dconv, dstate = ShortConv.backward(P[..., :Dc], conv_weight, conv_state, (H, K, HV * V // H), (dq, dk, dv), dP[..., :Dc], want_dstate, dk2)
    return [dP, dconv, dA_log, ddt_bias, P.new_empty(0) if dstate is None else dstate, P.new_empty(0) if dS0 is None else dS0]

@gdn_core_bwd.register_fake
def _(do, dS, saved, conv_state, S0, H, K, V, HV, C, want_dstate):  # saved starts with P, conv_weight, A_log, dt_bias
    return [torch.empty_like(t) for t in saved[:4]] + [torch.empty_like(conv_state) if conv_state is not None and
            want_dstate else do.new_empty(0), do.new_empty(0) if S0 is None else torch.empty_like(S0, dtype=torch.float32)]
def gdn_core_setup(ctx, inputs, output):
    P, conv_weight, A_log, dt_bias, conv_state, S0, *ctx.dims, _ = inputs
    ctx.save_for_backward(conv_state, S0, P, conv_weight, A_log, dt_bias, *output[2:])
    ctx.set_materialize_grads(False)  # no zero gradients for the kept tensors or an unused final state

def gdn_core_backward(ctx, grads):
    (conv_state, S0, *saved), need = ctx.saved_tensors, ctx.needs_input_grad
    dP, dconv, dA_log, ddt_bias, dstate, dS0 = gdn_core_bwd(*grads[:2], saved, conv_state, S0, *ctx.dims, need[4])
    return dP, dconv, dA_log, ddt_bias, dstate if need[4] else None, dS0 if need[5] else None, *[None] * 6

gdn_core_fwd.register_autograd(gdn_core_backward, setup_context=gdn_core_setup)

class GatedDeltaNet(nn.Module):
    """Gated DeltaNet mixer: q/k/v by a causal short conv (conv_size=0: none) + SiLU, L2-normalised q, k, beta = sigmoid(b),
    g = -exp(A_log) * softplus(a + dt_bias), output RMSNorm'd (weight folded into o_proj's), gated by silu(g_proj x) if gdn_output_gate."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, H, HV, K, W = cfg.model_dim, cfg.gdn_heads, cfg.gdn_v_heads or cfg.gdn_heads, cfg.gdn_head_dim, cfg.conv_size
        self.H, self.HV, self.K, self.Vh, self.chunk_size = H, HV, K, int(K * cfg.gdn_expand_v), cfg.chunk_size
        self.kernel = "torch"  # torch | fla, set by GPT.set_kernel
        self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.a_proj, self.b_proj = (  # g_proj None without the gate
            nn.Linear(D, n, bias=False) if n else None for n in (H * K, H * K, HV * self.Vh, HV * self.Vh * cfg.gdn_output_gate, HV, HV))
        conv = lambda n: nn.Parameter(torch.empty(n, W).uniform_(-W ** -0.5, W ** -0.5)) if W else None
        self.q_conv, self.k_conv, self.v_conv = conv(H * K), conv(H * K), conv(HV * self.Vh)  # None without the conv
        self.A_log = nn.Parameter(torch.empty(HV).uniform_(1, 16).log())
        dt = torch.exp(torch.rand(HV) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus(dt_bias) = dt
        self.norm_weight, self.o_proj = nn.Parameter(torch.ones(self.Vh)), nn.Linear(HV * self.Vh, D, bias=False)
        nn.init.zeros_(self.o_proj.weight)
    def forward(self, x, state=None, want_state=False, attn_window=0):
        (B, T, _), HV, Vh = x.shape, self.HV, self.Vh
        weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight, self.a_proj.weight,
                            self.b_proj.weight])  # the gate has its own GEMM, so P's gradient comes whole from core
        gate = 1.0 if self.g_proj is None else F.silu(self.g_proj(x).float().view(B, T, HV, Vh))
        o, conv_state, S = self.core(F.linear(x, weight), state, want_state)
        o, scale = rms_norm(o.float(), eps=1e-5) * gate, self.norm_weight.float()  # cast before flatten: one pass (run PE)
        hooked = self.o_proj._forward_pre_hooks or self.o_proj._forward_hooks  # hooks (GPTQ's) see o_proj's real input
        o = self.o_proj((o * scale).to(x.dtype).flatten(2)) if hooked else F.linear(
            o.to(x.dtype).flatten(2), self.o_proj.weight * scale.repeat(HV))  # folded: no pass over tokens for its gradient
        return o, ((conv_state, S) if want_state else None)
    def conv_weight(self) -> torch.Tensor:  # [q|k|v channels, W]; W = 0 without the short conv
        convs = (self.q_conv, self.k_conv, self.v_conv)
        return torch.cat(convs) if convs[0] is not None else self.A_log.new_empty(2 * self.H * self.K + self.HV * self.Vh, 0)
    def core(self, P, state, want_state: bool):
        """P = [q|k|v|a|b] -> per-head output and new states: the gdn_core_fwd op, or the same math in torch."""
        (H, HV, K, Vh), conv_state, S0 = (self.H, self.HV, self.K, self.Vh), *(state if state is not None else (None, None))
        conv_weight = self.conv_weight()
        if self.kernel == "fla":
            o, S = gdn_core_fwd(P, conv_weight, self.A_log, self.dt_bias, conv_state, S0, H, K, Vh, HV, self.chunk_size,
                                want_state)[:2]  # S is empty unless want_state
            return o, conv_tail(P[..., :-2 * HV], conv_state, conv_weight.shape[1]) if want_state else None, S
        qkv, a, b = P.split([2 * H * K + HV * Vh, HV, HV], dim=-1)
        q, k, v, conv_state = short_conv_qkv(qkv, conv_weight, conv_state, (H, K, HV * Vh // H))  # v: H groups of HV/H heads
        q, k, v = q.repeat_interleave(HV // H, 2), k.repeat_interleave(HV // H, 2), v.reshape(*v.shape[:2], HV, Vh)  # GVA
        g = -self.A_log.float().exp() * F.softplus(a.float() + self.dt_bias.float())
        with torch.autocast(P.device.type, enabled=False):
            o, S = gated_delta_rule_torch(q.float(), k.float(), v, g, b.float().sigmoid(), K ** -0.5, S0, self.chunk_size)
        return o, conv_state, S

@torch.library.custom_op(GDN_OPS + "::rope_table", mutates_args=())
def rope_table(inv_freq: Tensor, n: int) -> list[Tensor]:
    """RoPE's cos and sin for n positions, [n, 1, head_dim / 2] (for [B, n, heads, head_dim]): an op, so that inductor
    reads these tables in q's and k's kernels instead of fusing in cos and sin for each of their elements (run OD)."""
    angles = torch.outer(torch.arange(n, device=inv_freq.device, dtype=torch.float32), inv_freq)
    return [angles.cos()[:, None], angles.sin()[:, None]]
rope_table.register_fake(lambda inv_freq, n: [inv_freq.new_empty(n, 1, inv_freq.numel()) for _ in range(2)])

def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)

class Attention(nn.Module):
    """GQA softmax attention with RMSNorm on q and k and RoPE. A carried state is (keys before RoPE, values,
    valid) of earlier tokens; RoPE positions count from the oldest carried token, so they stay small."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, self.H, self.Hkv, self.hd = cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, cfg.model_dim // cfg.num_heads
        self.q_proj, self.o_proj = nn.Linear(D, D, bias=False), nn.Linear(D, D, bias=False)
        self.k_proj, self.v_proj = nn.Linear(D, self.Hkv * self.hd, bias=False), nn.Linear(D, self.Hkv * self.hd, bias=False)
        nn.init.zeros_(self.o_proj.weight)
        self.register_buffer("inv_freq", cfg.rope_base ** -(torch.arange(0, self.hd, 2).float() / self.hd), persistent=False)
    def forward(self, x, state=None, want_state=False, attn_window=0):
        (B, T, D), weight = x.shape, torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        # Split by heads, RoPE token-major: one backward pass per tensor into d(qkv) (run PA), no copy before o_proj (PD)
        q, k, v = F.linear(x, weight).view(B, T, -1, self.hd).split([self.H, self.Hkv, self.Hkv], dim=2)
        q, k, v = rms_norm(q), rms_norm(k), v.transpose(1, 2)
        if state is None:
            cos, sin = rope_table(self.inv_freq, T)
            q_r, k_r, v_all, mask = rotate(q, cos, sin).transpose(1, 2), rotate(k, cos, sin).transpose(1, 2), v, None
            k_all, valid = k.transpose(1, 2), torch.ones(B, T, dtype=torch.bool, device=x.device)
        else:
            (prev_k, prev_v, prev_valid), P = state, state[0].shape[2]
            k_all, v_all = torch.cat([prev_k.to(k.dtype), k.transpose(1, 2)], 2), torch.cat([prev_v.to(v.dtype), v], 2)
            valid = torch.cat([prev_valid, torch.ones(B, T, dtype=torch.bool, device=x.device)], 1)
            cos, sin = rope_table(self.inv_freq, P + T)
            q_r, k_r = rotate(q, cos[P:], sin[P:]).transpose(1, 2), rotate(k_all.transpose(1, 2), cos, sin).transpose(1, 2)
            distance = torch.arange(P, P + T, device=x.device)[:, None] - torch.arange(P + T, device=x.device)
            visible = (distance >= 0) & ((distance < attn_window) if attn_window else True)
            mask = (visible[None] & valid[:, None, :])[:, None]
        if mask is None and attn_window and attn_window < T:
            distance = torch.arange(T, device=x.device)[:, None] - torch.arange(T, device=x.device)
            mask = ((distance >= 0) & (distance < attn_window))[None, None]
        y = F.scaled_dot_product_attention(q_r, k_r, v_all, attn_mask=mask, is_causal=mask is None, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, D)), ((k_all, v_all, valid) if want_state else None)

if triton is not None:
    @triton.jit
    def relu2_mm_kernel(a, b, c, aux, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, BACKWARD: tl.constexpr):
        """c = relu(a b^T)^2 with b [N, K]; BACKWARD: c = (a b) 2 sqrt(aux) with b [K, N], the hidden's gradient from c's,
        aux = the forward's c (relu(h) = sqrt(c): h is never stored). Persistent over c's tiles, TMA loads (all [rows,
        cols] contiguous); beat the non-persistent and pointer forms: scripts/relu2_mm_explore.py."""
        a_d = tl.make_tensor_descriptor(a, shape=[M, K], strides=[K, 1], block_shape=[BM, BK])
        b_d = tl.make_tensor_descriptor(b, shape=[K, N] if BACKWARD else [N, K], strides=[N if BACKWARD else K, 1],
                                        block_shape=[BK, BN] if BACKWARD else [BN, BK])
        c_d, aux_d = [tl.make_tensor_descriptor(t, shape=[M, N], strides=[N, 1], block_shape=[BM, BN]) for t in (c, aux)]
        n_n = tl.cdiv(N, BN)
        for tile in tl.range(tl.program_id(0), tl.cdiv(M, BM) * n_n, tl.num_programs(0), flatten=True):
            m0, n0, acc = tile // n_n * BM, tile % n_n * BN, tl.zeros((BM, BN), tl.float32)
            for k0 in range(0, K, BK):
                acc = tl.dot(a_d.load([m0, k0]), b_d.load([k0, n0]) if BACKWARD else b_d.load([n0, k0]).T, acc)
            acc = acc * 2 * tl.sqrt(aux_d.load([m0, n0]).to(tl.float32)) if BACKWARD else tl.maximum(acc, 0.0) * tl.maximum(acc, 0.0)
            c_d.store([m0, n0], acc.to(c.dtype.element_ty))

def relu2_mm(a: Tensor, b: Tensor, aux: Tensor | None = None) -> Tensor:
    (M, K), N = a.shape, b.shape[0 if aux is None else 1]
    if K % 8 or N % 8:
        raise ValueError(f"model.model_dim={K}, MLP width {N}: the fused MLP's TMA loads need multiples of 8; set model.fused_mlp=false")
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=a.device))  # descriptors
    c, sms = a.new_empty(M, N), torch.cuda.get_device_properties(a.device).multi_processor_count
    BN, stages = (256, 3) if aux is None else (128, 5)  # the best tiles on an H100 (the backward's epilogue loads aux)
    relu2_mm_kernel[(min(sms, triton.cdiv(M, 128) * triton.cdiv(N, BN)),)](a, b, c, c if aux is None else aux, M, N, K, BM=128,
                                                                          BN=BN, BK=64, BACKWARD=aux is not None, num_warps=8, num_stages=stages)
    return c

@torch.library.custom_op(GDN_OPS + "::relu2_mlp_fwd", mutates_args=())
def relu2_mlp_fwd(x: Tensor, fc: Tensor, proj: Tensor) -> list[Tensor]:  # MLP output, and c = relu(x fc^T)^2 to keep
    return [(c := relu2_mm(x.contiguous(), fc)) @ proj.t(), c]

@torch.library.custom_op(GDN_OPS + "::relu2_mlp_bwd", mutates_args=())
def relu2_mlp_bwd(dy: Tensor, x: Tensor, fc: Tensor, proj: Tensor, c: Tensor) -> list[Tensor]:
    return [(dh := relu2_mm(dy.contiguous(), proj, c)) @ fc, dh.t() @ x, dy.t() @ c]

relu2_mlp_fwd.register_fake(lambda x, fc, proj: [x.new_empty(x.shape[0], proj.shape[0]), x.new_empty(x.shape[0], fc.shape[0])])
relu2_mlp_bwd.register_fake(lambda dy, x, fc, proj, c: [torch.empty_like(x), torch.empty_like(fc), torch.empty_like(proj)])
relu2_mlp_fwd.register_autograd(lambda ctx, grads: tuple(relu2_mlp_bwd(grads[0], *ctx.saved_tensors)), setup_context=lambda
                                ctx, inputs, output: (ctx.save_for_backward(*inputs, output[1]), ctx.set_materialize_grads(False)))

class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = int(cfg.mlp_mult * cfg.model_dim)
        self.fc, self.proj = nn.Linear(cfg.model_dim, hidden, bias=False), nn.Linear(hidden, cfg.model_dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.fused = False  # the Triton GEMMs with ReLU^2 inside (GPT.set_kernel); not under no_grad: GPTQ hooks fc and proj
    def forward(self, x):
        if self.fused and torch.is_grad_enabled() and torch.is_autocast_enabled(x.device.type):
            dt = torch.get_autocast_dtype(x.device.type)
            return relu2_mlp_fwd(x.reshape(-1, x.shape[-1]).to(dt), self.fc.weight.to(dt), self.proj.weight.to(dt))[0].view(x.shape)
        return self.proj(F.relu(self.fc(x)).square())

class Block(nn.Module):
    def __init__(self, kind: str, cfg: ModelConfig):
        super().__init__()
        self.kind, self.mixer, self.mlp = kind, GatedDeltaNet(cfg) if kind == "G" else Attention(cfg), MLP(cfg)
    def forward(self, x, state=None, want_state=False, attn_window=0, first=False, skip=None):
        # the embedding norm (first block) and U-Net skip add sit in the block's graph: as eager glue, ~2 ms/step
        x = rms_norm(x) if first else x if skip is None else x + skip[1].to(x.dtype) * skip[0]
        y, new_state = self.mixer(rms_norm(x), state, want_state, attn_window)
        x = x + y
        return x + self.mlp(rms_norm(x)), new_state

class Head(nn.Module):
    """Final RMSNorm -> tied output projection -> softcap (-> cross-entropy); a module so it compiles as a region."""
    def __init__(self, softcap: float):
        super().__init__()
        self.softcap = softcap
    def forward(self, x, weight, targets=None, reduction="mean"):
        logits = self.softcap * torch.tanh(F.linear(rms_norm(x), weight).float() / self.softcap)
        return logits if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)

class GPT(nn.Module):
    """Tied embedding -> blocks (with U-Net skips from the first half to the second) -> softcapped logits."""
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg, self.embed = cfg, nn.Embedding(cfg.vocab_size, cfg.model_dim)
        nn.init.normal_(self.embed.weight, std=cfg.tied_embed_init_std)
        self.blocks = nn.ModuleList(Block(kind, cfg) for kind in cfg.layout)
        self.num_skips = len(cfg.layout) // 2 if cfg.unet_skips else 0
        self.skip_weights = nn.Parameter(torch.ones(self.num_skips, cfg.model_dim)) if self.num_skips else None
        self.head = Head(cfg.logit_softcap)
    def compile_regions(self) -> None:
        """Each block and the head compiled alone (train.compile=regions): compile time does not grow with depth (blocks
        of one kind share code); the step is ~4% slower than one whole graph."""
        for block in self.blocks: block.compile()
        self.head.compile()
    def set_kernel(self, kernel: str) -> None:
        for block in self.blocks:
            block.mixer.kernel, block.mlp.fused = kernel, kernel == "fla" and self.cfg.fused_mlp  # (attention ignores kernel)
    def forward(self, idx, targets=None, state=None, want_state=False, reduction="mean", attn_window=0):
        """Returns logits, or the loss when targets are given; with want_state, also the per-block states."""
        x, skips, new_states = self.embed(idx), [], []
        x = x.bfloat16() if self.cfg.bf16_residual and torch.is_autocast_enabled(idx.device.type) else x  # half the traffic
        for i, block in enumerate(self.blocks):
            skip = (skips.pop(), self.skip_weights[i - self.num_skips]) if 0 <= i - self.num_skips < self.num_skips else None
            x, block_state = block(x, None if state is None else state[i], want_state, attn_window, i == 0, skip)
            new_states.append(block_state)
            if i < self.num_skips: skips.append(x)
        out = self.head(x, self.embed.weight, targets, reduction)
        return (out, new_states) if want_state else out

def resolve_kernel(kernel: str, device: torch.device) -> str:
    """auto -> fla on CUDA, torch elsewhere; fla needs CUDA and an importable FLA."""
    if kernel == "torch" or (kernel == "auto" and device.type != "cuda"):
        return "torch"
    if device.type != "cuda":
        raise ValueError(f"config model.kernel={kernel} needs a CUDA device; use model.kernel=torch (or auto) on CPU")
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
        from fla.utils import IS_NVIDIA_HOPPER, TRITON_ABOVE_3_4_0, TRITON_ABOVE_3_7_1
    except Exception as exc:
        raise RuntimeError(f"model.kernel={kernel} on CUDA needs flash-linear-attention (import failed: {exc}); "
                           "install it or set model.kernel=torch") from exc
    if IS_NVIDIA_HOPPER and TRITON_ABOVE_3_4_0 and not TRITON_ABOVE_3_7_1:  # FLA's wrappers refuse it; fla_grouped_bwd skips them
        raise RuntimeError(f"model.kernel={kernel}: Triton {triton.__version__} on Hopper gets FLA's gate gradients wrong (FLA #640): use >= 3.7.1")
    return "fla"

# ----------------------------------------------------------------------------------------------------
# OPTIMIZER: Muon (orthogonalised momentum) for the 2-D weight matrices, AdamW for the embedding and for
# small control tensors. Each parameter's group is decided by its role, and coverage is checked.

def param_role(name: str) -> str:
    if name == "embed.weight":
        return "embed"
    if name.endswith("_proj.weight") and not name.endswith(("a_proj.weight", "b_proj.weight")) or name.endswith(
            ("mlp.fc.weight", "mlp.proj.weight")):
        return "matrix"
    return "scalar"  # A_log, dt_bias, gate projections a/b, conv taps, norm weights, skip weights

def newton_schulz(G: torch.Tensor, steps: int) -> torch.Tensor:
    """Quintic Newton-Schulz iteration mapping G (or a stack of matrices) to about U V^T of its SVD."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = G.size(-2) > G.size(-1)  # iterate on the wide orientation, where X X^T is the smaller product
    X = (G.mT if tall else G).to(torch.bfloat16 if G.is_cuda else torch.float32)
    X = (X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)).reshape(-1, *X.shape[-2:])  # baddbmm takes a stack
    for _ in range(steps):  # a X + (b A + c A A) X, both sums inside the GEMMs (beta, alpha): no pointwise passes
        A = X @ X.mT
        X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return (X.mT if tall else X).reshape(G.shape).contiguous().to(G.dtype)  # contiguous: in the graph, fused with the cast

class Muon(torch.optim.Optimizer):
    """Nesterov momentum orthogonalised by Newton-Schulz. Parameter i's update is computed on rank i % world (same-shape
    matrices stacked, one batched iteration) and broadcast contiguous (a broadcast sends storage as it lies)."""
    def __init__(self, params, lr: float, momentum: float, weight_decay: float, ns_steps: int, d: Dist, ns=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, ns_steps=ns_steps))
        self.d, self.ns = d, ns or newton_schulz
    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            params, updates, handles = group["params"], {}, []
            mine, by_shape, m = [p for i, p in enumerate(params) if i % self.d.world == self.d.rank], {}, group["momentum"]
            bufs = [self.state[p]["momentum_buffer"] if self.state[p] else  # not setdefault: it would zero a new one
                    self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in mine]
            torch._foreach_mul_(bufs, m)  # multi-tensor kernels: one launch per op for all matrices, not one each
            torch._foreach_add_(bufs, [p.grad for p in mine])
            for p, nesterov in zip(mine, torch._foreach_add([p.grad for p in mine], bufs, alpha=m)):
                by_shape.setdefault(p.shape, []).append((p, nesterov))
            for shape, pairs in by_shape.items():
                ortho = self.ns(torch.stack([n for _, n in pairs]), group["ns_steps"]).contiguous() * max(1.0, shape[0] / shape[1]) ** 0.5
                updates.update(zip([p for p, _ in pairs], ortho.unbind(0)))
            for i, p in enumerate(params if self.d.world > 1 else []):
                updates.setdefault(p, torch.empty_like(p))
                handles.append(dist.broadcast(updates[p], src=i % self.d.world, async_op=True))
            for handle in handles: handle.wait()
            torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, [updates[p] for p in params], alpha=-group["lr"])

def build_optimizers(model: GPT, cfg: TrainConfig, d: Dist) -> list[torch.optim.Optimizer]:
    roles = {"matrix": [], "embed": [], "scalar": []}
    for name, p in model.named_parameters(): roles[param_role(name)].append(p)
    assigned = [id(p) for ps in roles.values() for p in ps]
    if len(assigned) != len(set(assigned)) or set(assigned) != {id(p) for p in model.parameters()}:
        raise AssertionError("optimizer groups must cover every parameter exactly once")
    # CUDA graphs: Newton-Schulz is ~30 small kernels per shape, and launching them took longer than running them
    ns = torch.compile(newton_schulz, mode="reduce-overhead") if d.device.type == "cuda" and cfg.compile != "off" else None
    muon = Muon(roles["matrix"], cfg.matrix_lr, cfg.muon_momentum, cfg.muon_weight_decay, cfg.muon_ns_steps, d, ns)
    adam = torch.optim.AdamW([dict(params=roles["embed"], lr=cfg.embed_lr), dict(params=roles["scalar"], lr=cfg.scalar_lr)],
                             betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=0.0, fused=d.device.type == "cuda")
    for group in muon.param_groups + adam.param_groups: group["base_lr"] = group["lr"]
    return [muon, adam]

# ----------------------------------------------------------------------------------------------------
# GRADIENT SPLIT: where the gradient goes, by block type and by GDN parameter group (after the all-reduce,
# before clipping), so the "75% of layers are GDN" claim can be measured instead of assumed.

GDN_GROUPS = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "g_proj": "z", "a_proj": "a", "b_proj": "b",
              "A_log": "A_log", "dt_bias": "dt_bias", "q_conv": "conv", "k_conv": "conv", "v_conv": "conv",
              "norm_weight": "norm", "o_proj": "out"}

def grad_category(name: str, layout: str) -> tuple[str, str]:
    """(block type, sub-group) of a parameter: gdn/attn/mlp/embed/skip and, inside GDN, the GDN group."""
    parts = name.split(".")
    if parts[0] != "blocks":
        return ("embed", "embed") if parts[0] == "embed" else ("skip", "skip")
    if parts[2] == "mlp":
        return "mlp", "mlp"
    if layout[int(parts[1])] == "A":
        return "attn", parts[3].split("_")[0]
    return "gdn", GDN_GROUPS[parts[3]]

def split_gradient(named_grads: list[tuple[str, torch.Tensor]], categorize) -> dict:
    """Squared-norm shares of the total gradient by type, by sub-group and per block; one host sync."""
    sq = torch.stack([g.detach().float().pow(2).sum() for _, g in named_grads]).double().cpu().tolist()
    total, out = sum(sq) or 1.0, {"total_norm": math.sqrt(sum(sq)), "type": {}, "group": {}, "block": {}}
    for (name, _), s in zip(named_grads, sq):
        kind, group = categorize(name)
        out["type"][kind] = out["type"].get(kind, 0.0) + s / total
        out["group"][f"{kind}.{group}"] = out["group"].get(f"{kind}.{group}", 0.0) + s / total
        block = ".".join(name.split(".")[:2]) if name.startswith("blocks.") else kind
        out["block"][block] = out["block"].get(block, 0.0) + s / total
    return out

# ----------------------------------------------------------------------------------------------------
# EVAL: exact bits per byte. Bytes per target token come from the SentencePiece pieces (leading U+2581 is a
# space unless the previous token is a boundary; <0xNN> is one byte); sums in float64, all-reduced.

def build_byte_tables(tokenizer_path: str, vocab_size: int, device) -> tuple[torch.Tensor, ...]:
    import sentencepiece as spm
    if not os.path.exists(tokenizer_path):
        raise FileNotFoundError(f"tokenizer {tokenizer_path} does not exist (data.tokenizer_path)")
    sp = spm.SentencePieceProcessor(model_file=tokenizer_path)
    if sp.vocab_size() != vocab_size:
        raise ValueError(f"tokenizer {tokenizer_path} has {sp.vocab_size()} pieces; model.vocab_size={vocab_size} must equal it")
    base, space, boundary = np.zeros(vocab_size, np.int64), np.zeros(vocab_size, bool), np.ones(vocab_size, bool)
    for i in range(sp.vocab_size()):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i): continue
        boundary[i], piece = False, sp.id_to_piece(i)
        space[i] = not sp.is_byte(i) and piece.startswith("\u2581")
        base[i] = 1 if sp.is_byte(i) else len(piece[1:].encode() if space[i] else piece.encode())  # <0xNN>: one byte
    return tuple(torch.from_numpy(a).to(device) for a in (base, space, boundary))

def target_bytes(tables, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    base, space, boundary = tables
    return base[targets] + (space[targets] & ~boundary[inputs]).long()

class EvalSums:
    def __init__(self, device):
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss (nats), tokens, bytes
    def add(self, losses, inputs, targets, tables, mask):
        self.sums += torch.stack([losses.view_as(targets).double()[mask].sum(), mask.sum().double(),
                                  target_bytes(tables, inputs, targets)[mask].sum().double()])
    def result(self, t0: float) -> dict:
        loss, tokens, nbytes = all_reduce(self.sums.clone()).tolist()
        return dict(val_loss=loss / tokens, val_bpb=loss / math.log(2) / nbytes, tokens=int(tokens),
                    bytes=int(nbytes), eval_time=time.perf_counter() - t0)

@torch.no_grad()
def eval_windows(model, tokens, tables, windows: list[tuple[int, int, int]], batch_seqs: int, d: Dist) -> dict:
    """Score (start, length, first scored position) windows, batched by length; this rank takes every world-th."""
    t0, acc, mine = time.perf_counter(), EvalSums(d.device), windows[d.rank::d.world]
    for i in range(0, len(mine), batch_seqs):
        for length in sorted({w[1] for w in mine[i:i + batch_seqs]}):
            group = [w for w in mine[i:i + batch_seqs] if w[1] == length]
            x, y = (torch.stack([tokens[s + shift:s + shift + length] for s, _, _ in group]) for shift in (0, 1))
            first = torch.tensor([f for _, _, f in group], device=x.device)
            with autocast(d):
                acc.add(model(x, y, reduction="none"), x, y, tables, torch.arange(length, device=x.device) >= first[:, None])
    return acc.result(t0)

def sliding_windows(n: int, seq_len: int, stride: int) -> list[tuple[int, int, int]]:
    """A window every `stride` tokens scoring only what the previous one did not reach: every scored target sees
    at least seq_len - stride tokens of context (except in the first window). stride = seq_len: plain evaluation."""
    windows, covered, start = [], 0, 0
    while covered < n:
        end = min(start + seq_len, n)
        windows.append((start, end - start, covered - start))
        covered, start = end, start + stride
    return windows

def reset_rows(state, keep: torch.Tensor):
    """Zero the carried state of the rows that start a new document (keep=False): a GDN state is (conv state
    [B, D, W], recurrent state [B, H, K, V]), an attention state (keys, values, valid [B, P])."""
    return [(s[0] * keep[:, None, None], s[1] * keep[:, None, None, None]) if len(s) == 2 else
            (s[0], s[1], s[2] & keep[:, None]) for s in state]

@torch.no_grad()
def eval_stateful(model, tokens, tables, seq_len: int, kv_window: int, rows: int, bos_id: int, d: Dist) -> dict:
    """Each document (split at BOS) is read in seq_len windows by one batch row carrying every GDN layer's conv and
    recurrent state and the attention layers' last kv_window keys/values: GDN sees whole documents, at linear cost."""
    t0, acc, n = time.perf_counter(), EvalSums(d.device), tokens.numel() - 1
    starts = sorted({0} | set((tokens[:n] == bos_id).nonzero().flatten().tolist()))
    docs = list(zip(starts, starts[1:] + [n]))[d.rank::d.world]
    queue, slots, state = iter(docs), [None] * rows, None
    positions = torch.arange(seq_len, device=d.device)
    while True:
        keep = torch.ones(rows, dtype=torch.bool, device=d.device)
        for r in range(rows):
            if slots[r] is None or slots[r][0] >= slots[r][1]:
                slots[r], keep[r] = None if (doc := next(queue, None)) is None else list(doc), False
        if all(s is None for s in slots): break
        lengths = torch.tensor([0 if s is None else min(seq_len, s[1] - s[0]) for s in slots], device=d.device)
        starts_now = torch.tensor([0 if s is None else s[0] for s in slots], device=d.device)
        index = (starts_now[:, None] + positions[None]).clamp(max=n - 1)
        x, y, mask = tokens[index], tokens[index + 1], positions[None] < lengths[:, None]
        for s in filter(None, slots):
            s[0] += min(seq_len, s[1] - s[0])
        state = None if state is None else reset_rows(state, keep)
        with autocast(d):
            losses, state = model(x, y, state=state, want_state=True, reduction="none", attn_window=kv_window)
        state = [s if len(s) == 2 else tuple(t.narrow(dim, max(0, t.shape[dim] - kv_window + 1), min(t.shape[dim], kv_window - 1))
                                             for t, dim in zip(s, (2, 2, 1))) for s in state]  # keys, values, valid
        acc.add(losses, x, y, tables, mask)
    return acc.result(t0)

def evaluate(model, val_tokens, tables, cfg: Config, d: Dist, modes: list[str]) -> dict[str, dict]:
    e, seq_len, n = cfg.eval, cfg.eval.seq_len or cfg.train.seq_len, val_tokens.numel() - 1
    windows = {"plain": lambda: sliding_windows(n, seq_len, seq_len), "sliding": lambda: sliding_windows(n, seq_len, e.stride)}
    return {mode: eval_stateful(model, val_tokens, tables, seq_len, e.kv_window or seq_len, e.batch_seqs, BOS_ID, d)
            if mode == "stateful" else eval_windows(model, val_tokens, tables, windows[mode](), e.batch_seqs, d)
            for mode in modes}

# ----------------------------------------------------------------------------------------------------
# QUANTIZATION: GPTQ with per-row SDClip scales (int6 block matrices, int8 tied embedding), small tensors in
# fp16, packed and compressed with the best of brotli/lzma/zstd. The artifact is what the size limit counts.

ARTIFACT_MAGIC, ARTIFACT_LIMIT = b"GDNQ", 16_000_000

QUANT_GROUPS = ["gdn", "attn", "mlp"] + [f"gdn.{g}" for g in ("q", "k", "v", "z", "a", "b", "out")] + [f"attn.{g}" for g in "qkvo"]

def quant_plan(model: GPT, cfg: ExportConfig) -> dict[str, tuple[int, float] | None]:
    """name -> (bits, clip_k) for GPTQ-quantized matrices (large, with an input Hessian), None for tensors kept in fp16.
    A matrix's bits: export.group_bits's for its leaf (gdn.k), else for its type (gdn), else export.matrix_bits."""
    sources, bits = hessian_sources(model), {g: int(b) for g, _, b in (item.partition(":") for item in cfg.group_bits)}
    leaf_bits = lambda kind, group: bits.get(f"{kind}.{group}", bits.get(kind, cfg.matrix_bits))
    return {name: None if p.ndim != 2 or p.numel() <= cfg.keep_float_max_numel or name not in sources else
            (cfg.embed_bits, cfg.embed_clip_k) if name == "embed.weight" else
            (leaf_bits(*grad_category(name, model.cfg.layout)), cfg.matrix_clip_k) for name, p in model.state_dict().items()}

def hessian_sources(model: GPT) -> dict[str, tuple[nn.Module, str]]:
    """Which module input feeds each quantizable weight: (module, 'pre' = its input | 'head' = final norm)."""
    out = {"embed.weight": (model.blocks[-1], "head")}
    for i, block in enumerate(model.blocks):
        out.update({f"blocks.{i}.mixer.{name}.weight": (block.mixer, "pre") for name in
                    ("q_proj", "k_proj", "v_proj", "g_proj", "a_proj", "b_proj") if getattr(block.mixer, name, None) is not None})
        out[f"blocks.{i}.mixer.o_proj.weight"] = (block.mixer.o_proj, "pre")
        out[f"blocks.{i}.mlp.fc.weight"], out[f"blocks.{i}.mlp.proj.weight"] = (block.mlp.fc, "pre"), (block.mlp.proj, "pre")
    return out

@torch.no_grad()
def collect_hessians(model: GPT, batches, names, d: Dist) -> dict[str, torch.Tensor]:
    """H = X^T X of each weight's input over the calibration batches (summed over ranks), via forward hooks."""
    sources = {n: s for n, s in hessian_sources(model).items() if n in names}
    per_module, hessians, handles = {}, {}, []
    for name, (module, kind) in sources.items():
        per_module.setdefault((module, kind), []).append(name)
    for (module, kind), group in per_module.items():
        def accumulate(x, group=group):
            x = x.detach().float().reshape(-1, x.size(-1))
            H = x.T @ x
            for n in group:
                hessians[n] = hessians[n] + H if n in hessians else H.clone()
        handles.append(module.register_forward_pre_hook(lambda m, args, f=accumulate: f(args[0])) if kind == "pre" else
                       module.register_forward_hook(lambda m, args, out, f=accumulate: f(rms_norm(out[0]))))
    try:
        with torch.compiler.set_stance("force_eager"):  # hooks with side effects: run the compiled regions eagerly
            for x in batches:
                with autocast(d): model(x)
    finally:
        for h in handles: h.remove()
    for n in sorted(hessians): all_reduce(hessians[n])
    return hessians

def sdclip_scale(W: torch.Tensor, bits: int, clip_k: float) -> torch.Tensor:
    """Per-row step size k * std(row) / maxq, rounded to the fp16 it is stored as."""
    return (clip_k * W.float().std(dim=1) / (2 ** (bits - 1) - 1)).clamp(min=1e-6).half().float()

def quantize_gptq(W: torch.Tensor, H: torch.Tensor, bits: int, clip_k: float, block: int = 128, damp: float = 0.01,
                  act_order: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """GPTQ: quantize columns in order (largest Hessian diagonal first with act-order), pushing each column's
    rounding error onto the not-yet-quantized columns through the Cholesky factor of H^-1; block-wise."""
    W, H = W.float().clone(), H.double().clone()
    maxq, scale = 2 ** (bits - 1) - 1, sdclip_scale(W, bits, clip_k)
    dead = torch.diag(H) == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(H.size(0), device=H.device)
    W, H = W[:, perm], H[perm][:, perm]
    eye = torch.eye(H.size(0), device=H.device, dtype=H.dtype)
    for attempt in range(4):  # an ill-conditioned H gets 10x more damping per retry
        L, info = torch.linalg.cholesky_ex(H + damp * 10 ** attempt * torch.diag(H).mean() * eye)
        Hinv, info2 = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
        if info.item() == 0 and info2.item() == 0: break
    else:
        raise RuntimeError("GPTQ: the Hessian stays singular even with 1000x damping")
    Hinv, Q = Hinv.float(), torch.zeros_like(W, dtype=torch.int8)
    for i1 in range(0, W.size(1), block):
        i2 = min(i1 + block, W.size(1))
        W1, Hinv1, err = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2], torch.zeros_like(W[:, i1:i2])
        for i in range(i2 - i1):
            q = torch.clamp(torch.round(W1[:, i] / scale), -maxq, maxq)
            Q[:, i1 + i] = q.to(torch.int8)
            err[:, i] = (W1[:, i] - q * scale) / Hinv1[i, i]
            W1[:, i:] -= err[:, i:i + 1] * Hinv1[i, i:][None]
        W[:, i2:] -= err @ Hinv[i1:i2, i2:]
    return Q[:, torch.argsort(perm)], scale

def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned ints < 2**bits densely: `bits` bits per value, little-endian bit order."""
    unpacked = (values.astype(np.uint8)[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(unpacked.reshape(-1), bitorder="little").tobytes()
def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    unpacked = np.unpackbits(np.frombuffer(data, np.uint8), count=count * bits, bitorder="little")
    return (unpacked.reshape(count, bits) << np.arange(bits, dtype=np.uint8)).sum(1).astype(np.uint8)

def shuffle_bytes(a: np.ndarray) -> bytes:
    """fp16 arrays as all high bytes then all low bytes: similar bytes sit together and compress better."""
    return np.ascontiguousarray(a.astype("<f2").view(np.uint8).reshape(-1, 2).T).tobytes()
def unshuffle_bytes(data: bytes, count: int) -> np.ndarray:
    return np.frombuffer(data, np.uint8).reshape(2, count).T.copy().view("<f2").reshape(-1)

def serialize(quantized: dict, packed: bool) -> bytes:
    """quantized: name -> ('int', q int8, scale, bits) | ('fp16', tensor). Header JSON + segments."""
    header, segments = [], []
    for name, entry in quantized.items():
        if entry[0] == "int":
            _, q, scale, bits = entry
            offset = q.cpu().numpy().astype(np.int16).reshape(-1) + 2 ** (bits - 1)  # to unsigned
            data = pack_bits(offset, bits) if packed else offset.astype(np.uint8).tobytes()
            segments += [data, shuffle_bytes(scale.cpu().numpy())]
            header.append(dict(name=name, kind="int", shape=list(q.shape), bits=bits, packed=packed, sizes=[len(data), len(segments[-1])]))
        else:
            segments.append(data := shuffle_bytes(entry[1].detach().float().cpu().numpy().reshape(-1)))
            header.append(dict(name=name, kind="fp16", shape=list(entry[1].shape), sizes=[len(data)]))
    head = json.dumps(header).encode()
    return len(head).to_bytes(4, "little") + head + b"".join(segments)

def deserialize(payload: bytes) -> dict[str, torch.Tensor]:
    n = int.from_bytes(payload[:4], "little")
    header, pos, state = json.loads(payload[4:4 + n]), 4 + n, {}
    for t in header:
        count = math.prod(t["shape"])
        if t["kind"] == "int":
            data, scale_data = payload[pos:pos + t["sizes"][0]], payload[pos + t["sizes"][0]:pos + sum(t["sizes"])]
            u = unpack_bits(data, t["bits"], count) if t["packed"] else np.frombuffer(data, np.uint8)
            q = torch.from_numpy(u.astype(np.float32) - 2 ** (t["bits"] - 1)).view(t["shape"])
            scale = torch.from_numpy(unshuffle_bytes(scale_data, t["shape"][0]).astype(np.float32))
            state[t["name"]] = q * scale[:, None]
        else:
            state[t["name"]] = torch.from_numpy(unshuffle_bytes(payload[pos:pos + t["sizes"][0]], count).astype(np.float32)).view(t["shape"])
        pos += sum(t["sizes"])
    return state

CODECS = {"brotli": (lambda b: __import__("brotli").compress(b, quality=11, lgwin=24), lambda b: __import__("brotli").decompress(b)),
          "lzma": (lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), lzma.decompress),  # name -> (compress, decompress)
          "zstd": (lambda b: __import__("zstandard").ZstdCompressor(level=22).compress(b),
                   lambda b: __import__("zstandard").ZstdDecompressor().decompress(b))}

def build_artifact(quantized: dict, compressors: list[str]) -> tuple[bytes, dict[str, int]]:
    """Try packed and byte-per-value layouts with every compressor (in parallel threads); keep the smallest."""
    from concurrent.futures import ThreadPoolExecutor
    payloads = {"packed": serialize(quantized, True), "bytes": serialize(quantized, False)}
    jobs = [(layout, method) for layout in payloads for method in compressors]
    with ThreadPoolExecutor(len(jobs)) as pool:
        blobs = dict(zip(jobs, pool.map(lambda job: CODECS[job[1]][0](payloads[job[0]]), jobs)))
    layout, method = min(blobs, key=lambda job: len(blobs[job]))
    sizes = {f"{lay}+{m}": len(b) for (lay, m), b in blobs.items()}
    return ARTIFACT_MAGIC + bytes([list(COMPRESSORS).index(method)]) + blobs[(layout, method)], sizes

def load_artifact(blob: bytes) -> dict[str, torch.Tensor]:
    if blob[:4] != ARTIFACT_MAGIC or blob[4] >= len(COMPRESSORS):
        raise ValueError("not a GDNQ artifact (bad magic or compressor id)")
    return deserialize(CODECS[list(COMPRESSORS)[blob[4]]][1](blob[5:]))

def quantize_model(model: GPT, hessians: dict, cfg: ExportConfig) -> dict:
    quantized, plan = {}, quant_plan(model, cfg)
    for name, p in model.state_dict().items():
        if spec := plan[name]:
            q, scale = quantize_gptq(p, hessians[name], *spec, cfg.gptq_block, cfg.gptq_damp, cfg.act_order)
        quantized[name] = ("int", q, scale.half(), spec[0]) if spec else ("fp16", p.clone())  # not the live weight
    return quantized

def dequantize(quantized: dict) -> dict[str, torch.Tensor]:
    """What the artifact decodes to, computed in-process (the round trip must reproduce it exactly)."""
    return {name: (e[1].float().cpu() * e[2].float().cpu()[:, None] if e[0] == "int" else e[1].detach().half().float().cpu())
            for name, e in quantized.items()}

def calibration_batches(stream: TokenStream, start: int, n_seqs: int, seq_len: int, batch: int, d: Dist):
    """This rank's share of n_seqs training sequences read from `start` (not yet trained on)."""
    mine = list(range(d.rank, n_seqs, d.world))
    for i in range(0, len(mine), batch):
        rows = [torch.from_numpy(stream.read(start + j * seq_len, seq_len)) for j in mine[i:i + batch]]
        yield torch.stack(rows).to(d.device)

@torch.no_grad()
def generate_tokens(model: GPT, n_seqs: int, seq_len: int, d: Dist, seed: int) -> torch.Tensor:
    """Self-generated calibration text: sample from the model itself, starting at BOS, carrying state."""
    gen = torch.Generator(device=d.device).manual_seed(seed)
    x, out, state = torch.full((n_seqs, 1), BOS_ID, device=d.device), [], None
    for _ in range(seq_len):
        out.append(x)
        with autocast(d):
            logits, state = model(x, state=state, want_state=True)
        x = torch.multinomial(torch.softmax(logits[:, -1].float(), -1), 1, generator=gen)
    return torch.cat(out, 1)

# ----------------------------------------------------------------------------------------------------
# TRAINING: warm-up steps (compile, autotune) rolled back, then a clock-limited loop; the stop step and the
# LR schedule come from clock readings all-reduced on log steps, so every rank makes the same decisions.

def is_log_step(step: int, every: int) -> bool:
    """Multiples of `every`, plus powers of two before it (early clock readings for the stop decision)."""
    return step % every == 0 or (step < every and step & (step - 1) == 0)
def next_log_step(step: int, every: int) -> int:
    return next(s for s in range(step + 1, step + every + 1) if is_log_step(s, every))
def lr_scale_at(progress: float, warmdown_frac: float) -> float:
    return 1.0 if progress < 1 - warmdown_frac else max(0.0, (1 - progress) / warmdown_frac)
def peak_memory_mib(d: Dist) -> float:  # ru_maxrss is in KiB on Linux
    return (torch.cuda.max_memory_allocated(d.device) / 2**20 if d.device.type == "cuda" else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
def write_json(path: str, obj: dict) -> None:
    Path(path + ".tmp").write_text(json.dumps(obj, indent=1, default=str))  # then renamed: never half-written
    os.replace(path + ".tmp", path)

class Trainer:
    def __init__(self, cfg: Config, d: Dist, loader):
        self.cfg, self.d, self.loader = cfg, d, loader
        torch.manual_seed(cfg.train.seed)
        self.model = GPT(cfg.model).to(d.device)
        self.model.set_kernel(resolve_kernel(cfg.model.kernel, d.device))
        mode = {"auto": "whole" if d.device.type == "cuda" else "off"}.get(cfg.train.compile, cfg.train.compile)
        if mode != "off":  # whole: one graph, ~4% faster steps, eval shapes recompile it; regions: see compile_regions
            self.model.compile_regions() if mode == "regions" else self.model.compile()
        self.optimizers = build_optimizers(self.model, cfg.train, d)
        self.names, self.params = map(list, zip(*self.model.named_parameters()))
        self.step, self.ema = 0, [p.detach().float().clone() for p in self.params] if cfg.train.ema_decay > 0 else None
    def train_step(self, lr_scale: float, momentum: float, grad_split: bool) -> tuple[torch.Tensor, dict | None]:
        total, batch = torch.zeros((), device=self.d.device), self.loader.next_batch()
        for x, y in batch:
            with autocast(self.d):
                loss = self.model(x, y)
            (loss / len(batch)).backward()
            total += loss.detach()
        if self.d.world > 1:  # one flat all-reduce of all gradients (average over ranks)
            grads = [p.grad for p in self.params]
            flat = all_reduce(torch._utils._flatten_dense_tensors(grads)) / self.d.world
            for g, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                g.copy_(reduced)
        split = split_gradient([(n, p.grad) for n, p in zip(self.names, self.params)],
                               lambda n: grad_category(n, self.cfg.model.layout)) if grad_split else None
        if self.cfg.train.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip_norm)
        for opt in self.optimizers:
            for group in opt.param_groups:  # Muon's groups also take the momentum warm-up
                group.update(lr=group["base_lr"] * lr_scale, **({"momentum": momentum} if "momentum" in group else {}))
            opt.step()
            opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            decay = min(self.cfg.train.ema_decay, (1 + self.step) / (10 + self.step))
            torch._foreach_lerp_(self.ema, [p.detach().float() for p in self.params], 1 - decay)
        self.step += 1
        return total / len(batch), split
    def snapshot(self):
        return (copy.deepcopy(self.model.state_dict()), [copy.deepcopy(o.state_dict()) for o in self.optimizers],
                self.loader.position, None if self.ema is None else [e.clone() for e in self.ema], self.step)
    def restore(self, snap) -> None:
        self.model.load_state_dict(snap[0])  # snap: model, optimizers, loader position, EMA, step
        for opt, state in zip(self.optimizers, snap[1]): opt.load_state_dict(state)
        self.loader.position, self.ema, self.step = snap[2:]
    @torch.no_grad()
    def apply_ema(self) -> None:
        if self.ema is not None: torch._foreach_copy_(self.params, self.ema)

def main(argv: list[str]) -> dict:
    cfg, d = load_config(argv), init_distributed()
    box = [cfg.run.run_id or time.strftime("%Y%m%d_%H%M%S_") + uuid.uuid4().hex[:6]]  # an empty id: made on rank 0
    if d.world > 1: dist.broadcast_object_list(box, src=0)
    cfg.run.run_id = box[0]
    if cfg.export.enabled and cfg.export.calib_seqs < d.world:  # a rank without rows would skip the Hessian reductions
        raise ValueError(f"config export.calib_seqs: {cfg.export.calib_seqs} must be >= the world size {d.world}")
    log, tcfg, code = Logger(cfg, d), cfg.train, Path(__file__).read_text(encoding="utf-8")
    log("\n".join([code, "=" * 100, environment_report(d)]), console=False)
    log("config:" + json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    if d.master:  # the resolved config, runnable as: train_gpt.py --config <this file> [overrides]; a new run, a new id
        from omegaconf import OmegaConf
        saved = dataclasses.asdict(cfg) | {"run": dataclasses.asdict(cfg.run) | {"run_id": ""}}
        Path(cfg.run.log_dir, f"{cfg.run.run_id}.config.yaml").write_text(OmegaConf.to_yaml(saved))
    meta = load_data_meta(cfg.data)
    tables = build_byte_tables(cfg.data.tokenizer_path, cfg.model.vocab_size, d.device)
    val_tokens = load_val_tokens(cfg.data.val_files, d.device, cfg.model.vocab_size)
    trainer = Trainer(cfg, d, TrainLoader(cfg.data.train_files, cfg.train, d, cfg.model.vocab_size))
    model, loader, n_params = trainer.model, trainer.loader, sum(p.numel() for p in trainer.model.parameters())
    budget = training_budget(cfg)
    log(f"model:{cfg.model.preset} layout:{cfg.model.layout} params:{n_params} kernel:{resolve_kernel(cfg.model.kernel, d.device)} "
        f"compile:{cfg.train.compile} world_size:{d.world} grad_accum_steps:{loader.accum_steps} "
        f"train_tokens:{loader.stream.total} val_tokens:{val_tokens.numel()} training_budget:{budget:.1f}s")

    if tcfg.warmup_steps > 0:  # compile and autotune on real steps, then restore weights, optimizer state, data position
        snap, t0 = trainer.snapshot(), time.perf_counter()
        for _ in range(tcfg.warmup_steps): trainer.train_step(1.0, tcfg.muon_momentum_start, False)
        synchronize(d)
        trainer.restore(snap)
        log(f"warmup_steps:{tcfg.warmup_steps} warmup_time:{time.perf_counter() - t0:.1f}s (rolled back)")

    grad_split_path = os.path.join(cfg.run.log_dir, f"{cfg.run.run_id}.grad_split.jsonl")
    stop_step = tcfg.max_steps or None
    train_time, checked_time, checked_step, step_avg, last_log = 0.0, 0.0, 0, None, (0, 0.0)
    synchronize(d)
    t0 = time.perf_counter()
    while trainer.step < (stop_step or 1 << 62):
        step = trainer.step
        if tcfg.val_every and step and step % tcfg.val_every == 0:  # the clock pauses while validating
            synchronize(d)
            train_time += time.perf_counter() - t0
            result = evaluate(model, val_tokens, tables, cfg, d, ["plain"])["plain"]
            log.metrics(f"step:{step}", step, val_loss=result["val_loss"], val_bpb=result["val_bpb"])
            synchronize(d)
            t0 = time.perf_counter()
        progress = step / tcfg.max_steps if tcfg.schedule == "steps" else 0.0 if step_avg is None else (
            checked_time + (step - checked_step) * step_avg) / budget
        lr_scale = lr_scale_at(progress, tcfg.warmdown_frac)
        frac = min(step / tcfg.muon_momentum_warmup_steps, 1.0) if tcfg.muon_momentum_warmup_steps else 1.0
        momentum = (1 - frac) * tcfg.muon_momentum_start + frac * tcfg.muon_momentum
        want_split = tcfg.grad_split_every > 0 and step % tcfg.grad_split_every == 0
        loss, split = trainer.train_step(lr_scale, momentum, want_split)
        if split is not None and d.master:
            with open(grad_split_path, "a") as f:
                f.write(json.dumps({"step": step, **split}) + "\n")
            log(f"grad_split step:{step} total_norm:{split['total_norm']:.4f} "
                + " ".join(f"{k}:{v:.4f}" for k, v in sorted(split["type"].items()) + sorted(split["group"].items())))
        step += 1
        if is_log_step(step, tcfg.log_every) or step == stop_step:
            # The only host sync of the loop: agree on the clock (max over ranks), then decide identically everywhere
            # whether the budget ends before the next log step; if so, fix the last step now.
            elapsed = torch.tensor([train_time + time.perf_counter() - t0], dtype=torch.float64, device=d.device)
            checked_time = all_reduce(elapsed, dist.ReduceOp.MAX).item()
            loss = all_reduce(loss.detach().clone()) / d.world
            checked_step, step_avg = step, checked_time / step
            remaining = max(0, int((budget - checked_time) // step_avg))
            if step + remaining < next_log_step(step, tcfg.log_every):
                stop_step = min(stop_step or 1 << 62, step + remaining)
            total_steps = min(stop_step or 1 << 62, step + remaining)
            interval_tokens = (step - last_log[0]) * tcfg.global_batch_tokens
            log.metrics(f"step:{step}/{total_steps}", step, train_loss=loss.item(), lr_scale=lr_scale,
                        **{"tok/s": int(interval_tokens / max(checked_time - last_log[1], 1e-9))},
                        step_avg=f"{1000 * step_avg:.2f}ms", elapsed=f"{checked_time:.1f}s",
                        eta=f"{(total_steps - step) * step_avg:.1f}s")
            last_log = (step, checked_time)
    synchronize(d)
    train_time += time.perf_counter() - t0
    if tcfg.max_steps and trainer.step < tcfg.max_steps:
        log(f"stopping_early: wallclock_cap train_time:{train_time:.1f}s step:{trainer.step}/{tcfg.max_steps}")
    trainer.apply_ema()
    steps, tokens_seen = trainer.step, trainer.step * tcfg.global_batch_tokens
    epochs = tokens_seen / loader.stream.total  # past 1.0 the loader wrapped around: data repeated, calibration included
    log(f"train_time:{train_time:.1f}s steps:{steps} tokens_seen:{tokens_seen} "
        f"step_avg:{1000 * train_time / max(steps, 1):.2f}ms tok/s:{int(tokens_seen / max(train_time, 1e-9))} "
        f"peak_mem_mib:{peak_memory_mib(d):.0f} train_epochs:{epochs:.3f}" + " WARNING:train_data_repeated" * (epochs > 1))

    xcfg, hessians, clock = cfg.export, None, train_time  # clock: training plus calibration that reads train data
    quant_names = [n for n, spec in quant_plan(model, xcfg).items() if spec is not None]
    calib_len = xcfg.calib_seq_len or tcfg.seq_len
    if xcfg.enabled and xcfg.calib_source == "train":  # reads training data: inside the training clock
        t = time.perf_counter()
        hessians = collect_hessians(model, calibration_batches(loader.stream, loader.position, xcfg.calib_seqs, calib_len,
                                                               tcfg.micro_batch_seqs, d), quant_names, d)
        synchronize(d)
        clock = train_time + time.perf_counter() - t
        log(f"export_hessians_time:{time.perf_counter() - t:.1f}s training_clock_used:{clock:.1f}s "
            f"of:{tcfg.max_wallclock_seconds:.0f}s" + (" WARNING:calibration_overran_the_training_clock"
                                                       if clock > tcfg.max_wallclock_seconds else ""))
    if d.master and cfg.run.save_model:  # after calibration, which counts as training; survives a crash in export or eval
        torch.save(model.state_dict(), os.path.join(cfg.run.log_dir, f"{cfg.run.run_id}.model.pt"))

    evals = evaluate(model, val_tokens, tables, cfg, d, cfg.eval.modes)
    for mode, r in evals.items():
        log(f"eval_{mode} val_loss:{r['val_loss']:.8f} val_bpb:{r['val_bpb']:.8f} eval_time:{r['eval_time']:.1f}s "
            f"tokens:{r['tokens']} bytes:{r['bytes']}")
    score, floor = evals[cfg.eval.modes[0]], meta.get("entropy_floor_bpb")
    log(f"bpb_per_loss:{score['val_bpb'] / score['val_loss']:.6f}"
        + (f" entropy_floor_bpb:{floor:.6f} above_floor:{score['val_bpb'] > floor}" if floor is not None else ""))
    results = dict(run_id=cfg.run.run_id, date=time.strftime("%Y-%m-%d"), model_preset=cfg.model.preset,
                   layout=cfg.model.layout, seed=tcfg.seed, world_size=d.world, hardware=f"{d.world}x" + (torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "CPU"),
                   versions=package_versions(), params=n_params, steps=steps, tokens_seen=tokens_seen,
                   train_time_s=train_time, training_clock_s=clock, train_epochs=epochs, step_avg_ms=1000 * train_time / max(steps, 1),
                   tok_per_s=tokens_seen / max(train_time, 1e-9), peak_mem_mib=peak_memory_mib(d),
                   val_loss=score["val_loss"], val_bpb=score["val_bpb"], evals=evals, entropy_floor_bpb=floor,
                   q_val_loss=None, q_val_bpb=None, quant_name=None, bytes_code=len(code.encode()), bytes_model=0,
                   bytes_total=len(code.encode()), eval_time_s=sum(r["eval_time"] for r in evals.values()),
                   log_path=log.path, artifact_path=None, artifact_sha256=None,
                   code_sha256=hashlib.sha256(code.encode()).hexdigest(), config=dataclasses.asdict(cfg), data_name=cfg.data.name)
    results["final_line"] = final_line = f"final_bf16_exact val_loss:{score['val_loss']:.8f} val_bpb:{score['val_bpb']:.8f}"
    log(final_line)
    results_path = os.path.join(cfg.run.log_dir, f"{cfg.run.run_id}.results.json")
    if d.master: write_json(results_path, results)
    if xcfg.enabled:
        results.update(export_and_roundtrip(model, hessians, quant_names, calib_len, code, score, val_tokens, tables, cfg, d, log))
        results["eval_time_s"] += results["export_times"]["roundtrip_eval"]
        if d.master: write_json(results_path, results)
    log.summary(results)
    log.close()
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return results

def export_and_roundtrip(model, hessians, quant_names, calib_len, code, score, val_tokens, tables, cfg, d, log) -> dict:
    """GPTQ -> artifact (rank 0 writes it) -> fresh model loaded from the file -> eval: the score line."""
    xcfg, times, t = cfg.export, {}, time.perf_counter()
    if hessians is None:  # self-generated calibration text: allowed after the training clock
        n = len(range(d.rank, xcfg.calib_seqs, d.world))
        tokens = generate_tokens(model, n, calib_len, d, cfg.train.seed + d.rank)
        hessians = collect_hessians(model, tokens.split(cfg.train.micro_batch_seqs), quant_names, d)
        times["calib_generate"] = time.perf_counter() - t
    t = time.perf_counter()
    quantized = quantize_model(model, hessians, xcfg)
    times["gptq"], t = time.perf_counter() - t, time.perf_counter()
    path = os.path.join(cfg.run.log_dir, f"{cfg.run.run_id}.int{xcfg.matrix_bits}.ptz")
    if d.master:
        blob, sizes = build_artifact(quantized, xcfg.compressors)
        Path(path + ".tmp").write_bytes(blob)
        os.replace(path + ".tmp", path)
        log("export_candidates " + " ".join(f"{k}:{v}" for k, v in sorted(sizes.items(), key=lambda kv: kv[1])))
    if d.world > 1: dist.barrier()
    times["compress"], t = time.perf_counter() - t, time.perf_counter()
    blob, fresh = Path(path).read_bytes(), GPT(cfg.model)
    fresh.load_state_dict(load_artifact(blob), strict=True)
    exact = all(torch.equal(fresh.state_dict()[k].float(), v) for k, v in dequantize(quantized).items())
    fresh.to(d.device).set_kernel(resolve_kernel(cfg.model.kernel, d.device))
    q = evaluate(fresh, val_tokens, tables, cfg, d, cfg.eval.modes[:1])[cfg.eval.modes[0]]
    times["roundtrip_eval"] = time.perf_counter() - t
    bytes_code, bytes_model, name = len(code.encode()), len(blob), f"int{xcfg.matrix_bits}"
    log(f"bytes_code:{bytes_code} bytes_model:{bytes_model} bytes_total:{bytes_code + bytes_model}"
        + ("" if bytes_code + bytes_model <= ARTIFACT_LIMIT else
           f" !!! OVER THE {ARTIFACT_LIMIT}-BYTE LIMIT BY {bytes_code + bytes_model - ARTIFACT_LIMIT}: NOT ELIGIBLE !!!"))
    log(" ".join(f"export_{k}_time:{v:.1f}s" for k, v in times.items()) + f" roundtrip_state_exact:{exact}")
    log(f"quant_gap_bpb:{q['val_bpb'] - score['val_bpb']:+.6f} quant_gap_loss:{q['val_loss'] - score['val_loss']:+.6f}")
    final_line = f"final_{name}_roundtrip_exact val_loss:{q['val_loss']:.8f} val_bpb:{q['val_bpb']:.8f}"
    log(final_line)
    return dict(q_val_loss=q["val_loss"], q_val_bpb=q["val_bpb"], quant_name=name, bytes_model=bytes_model,
                bytes_total=bytes_code + bytes_model, artifact_path=path, artifact_sha256=hashlib.sha256(blob).hexdigest(),
                export_times=times, roundtrip_state_exact=exact, final_line=final_line)

if __name__ == "__main__":
    if main(sys.argv[1:])["world_size"] > 1:  # skip finalization: in it CPython < 3.14 aborts (SIGABRT) a gloo worker
        sys.stdout.flush(), os._exit(0)        # thread still freeing the last collective's tensors; all output is closed

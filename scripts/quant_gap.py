"""Where a run's quantization gap comes from: the run's trained weights evaluated with one group of tensors at a time
replaced by what its int artifact decodes to, the rest kept as trained. The groups are the gradient split's
(`train_gpt.grad_category`): by block type (gdn, attn, mlp, embed, skip) and, inside them, by parameter group (GDN's
q, k, v, z (output gate), a, b, A_log, dt_bias, conv, norm, out; attention's q, k, v, o; ...). Tensors the export
keeps in fp16 count too: their rounding is part of the gap.

    python scripts/quant_gap.py logs/<run_id> [--val-tokens N] [--out gap.json]

Reads <run>.config.yaml (the resolved config the trainer wrote), <run>.model.pt (the trained weights, saved before
export) and <run>.int<bits>.ptz (the artifact), and the run's validation shards and tokenizer. Every row is an eval in
the run's score mode (its first `eval.modes`; `--mode` for another) on the first N validation tokens. On all of them
the `float` and `all` rows reproduce the run's own two scores: exactly on CPU (tests/test_quant_gap.py); on CUDA to
the kernels' rounding (the trainer scored `float` with its compiled model, and FLA's autotuned launch configs may
differ between processes). The summary prints the run's own scores from <run>.results.json where it exists.
Per row: tensors, parameters, the relative weight error ||Q - W|| / ||W||, val_loss, val_bpb, the gap against `float`
and its share of the whole gap (`all`). Rows: float, all, each type, then each leaf that splits a type (gdn.q ...
attn.o). The parts' gaps need not add up to the whole: the summary gives the sums over types and over leaves (a type
not split is its own leaf). On CUDA with bf16 autocast and FLA's kernels, as the trainer evaluates; else on CPU.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402


def run_files(run: str) -> tuple[Path, Path, Path, Path]:
    """(prefix, config, weights, artifact) of a run prefix logs/<run_id>; each must exist, and exactly one artifact."""
    prefix = Path(run[:-len(".config.yaml")] if run.endswith(".config.yaml") else run)
    config, weights = prefix.with_name(prefix.name + ".config.yaml"), prefix.with_name(prefix.name + ".model.pt")
    artifacts = sorted(prefix.parent.glob(prefix.name + ".int*.ptz"))
    for path, what in ((config, "the resolved config the trainer writes"),
                       (weights, "the trained weights (run.save_model=true)")):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; expected {what}")
    if len(artifacts) != 1:
        raise FileNotFoundError(f"{prefix}.int*.ptz: expected one artifact (the run's export), found "
                                f"{len(artifacts)}{': ' + ', '.join(map(str, artifacts)) if artifacts else ''}")
    return prefix, config, weights, artifacts[0]


def tensor_groups(names: list[str], layout: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(by type, by leaf) -> tensor names: a type is gdn/attn/mlp/embed/skip; a leaf is 'type.group' where the gradient
    split divides the type (gdn, attn), else the type itself. Each family partitions the names."""
    types: dict[str, list[str]] = {}
    leaves: dict[str, list[str]] = {}
    for name in names:
        kind, group = tg.grad_category(name, layout)
        types.setdefault(kind, []).append(name)
        leaves.setdefault(kind if group == kind else f"{kind}.{group}", []).append(name)
    return types, leaves


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="logs/<run_id> (or its .config.yaml)")
    parser.add_argument("--val-tokens", type=int, default=0, help="evaluate on the first N validation tokens (0: all)")
    parser.add_argument("--mode", choices=("plain", "sliding", "stateful"),
                        help="eval mode (default: the run's score mode)")
    parser.add_argument("--device", default="auto", help="auto (cuda if present) | cpu | cuda")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    if args.val_tokens < 0:
        parser.error(f"--val-tokens {args.val_tokens}: expected >= 0 (0: all)")
    prefix, config_path, weights_path, artifact_path = run_files(args.run)
    cfg = tg.load_config(["--config", str(config_path)])
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    d, mode = tg.Dist(0, 1, 0, device), args.mode or cfg.eval.modes[0]

    trained = torch.load(weights_path, map_location="cpu")
    decoded = tg.load_artifact(artifact_path.read_bytes())
    if decoded.keys() != trained.keys() or any(decoded[k].shape != trained[k].shape for k in trained):
        raise ValueError(f"{artifact_path}: its tensors do not match {weights_path}'s names and shapes "
                         f"(not the same run?)")
    trained = {k: v.float() for k, v in trained.items()}
    changed = [k for k in trained if not torch.equal(decoded[k], trained[k])]

    val = tg.load_val_tokens(cfg.data.val_files, device, cfg.model.vocab_size)
    if args.val_tokens:
        if args.val_tokens + 1 > val.numel():
            raise ValueError(f"--val-tokens {args.val_tokens}: the validation set has {val.numel() - 1} targets")
        val = val[:args.val_tokens + 1]
    tables = tg.build_byte_tables(cfg.data.tokenizer_path, cfg.model.vocab_size, device)
    model = tg.GPT(cfg.model).to(device)
    model.set_kernel(tg.resolve_kernel(cfg.model.kernel, device))

    def score(names: list[str]) -> dict:
        swap = set(names)
        model.load_state_dict({k: decoded[k] if k in swap else trained[k] for k in trained})
        return tg.evaluate(model, val, tables, cfg, d, [mode])[mode]

    def weight_err(names: list[str]) -> float:
        num = sum((decoded[k] - trained[k]).pow(2).sum().item() for k in names)
        return math.sqrt(num / max(sum(trained[k].pow(2).sum().item() for k in names), 1e-30))

    t0, rows = time.perf_counter(), []
    types, leaves = tensor_groups(changed, cfg.model.layout)
    splits = sorted((k, v) for k, v in leaves.items() if k not in types)
    order = [("float", []), ("all", changed)] + sorted(types.items()) + splits
    for group, names in order:  # each row printed as it comes: a long CPU run that stops keeps what it did
        row = dict(group=group, tensors=len(names), params=sum(trained[k].numel() for k in names),
                   weight_err=weight_err(names), **score(names))
        rows.append(row)
        base = rows[0]
        whole = rows[1]["val_bpb"] - base["val_bpb"] if len(rows) > 1 else 0.0  # the `all` row's gap
        row["gap_bpb"] = row["val_bpb"] - base["val_bpb"]
        row["share"] = row["gap_bpb"] / whole if row is not base and whole else None  # float: none; all: 1
        share = "-" if row["share"] is None else f"{100 * row['share']:.1f}%"
        print(f"quant_gap group:{group} tensors:{row['tensors']} params:{row['params']} "
              f"weight_err:{row['weight_err']:.4e} val_loss:{row['val_loss']:.8f} val_bpb:{row['val_bpb']:.8f} "
              f"gap_bpb:{row['gap_bpb']:+.6f} share:{share}", flush=True)
    gap_of = {r["group"]: r["gap_bpb"] for r in rows}
    print(f"quant_gap_summary run:{prefix.name} artifact:{artifact_path.name} "
          f"tokens:{base['tokens']} tensors_changed:{len(changed)} tensors_unchanged:{len(trained) - len(changed)} "
          f"gap_bpb:{whole:+.6f} sum_of_types:{sum(gap_of[k] for k in types):+.6f} "
          f"sum_of_leaves:{sum(gap_of[k] for k in leaves):+.6f} mode:{mode} device:{device.type} "
          f"time:{time.perf_counter() - t0:.1f}s")
    results = prefix.with_name(prefix.name + ".results.json")
    if results.is_file() and (ran := json.loads(results.read_text())).get("q_val_bpb") is not None:
        print(f"quant_gap_run_scores mode:{cfg.eval.modes[0]} val_bpb:{ran['val_bpb']:.8f} "
              f"q_val_bpb:{ran['q_val_bpb']:.8f} tokens:{ran['evals'][cfg.eval.modes[0]]['tokens']} (the run's own)")
    if args.out:
        kept = [{k: v for k, v in r.items() if k != "eval_time"} for r in rows]
        Path(args.out).write_text(json.dumps(dict(run=str(config_path), artifact=str(artifact_path), mode=mode,
                                                  device=device.type, rows=kept), indent=1))


if __name__ == "__main__":
    main()

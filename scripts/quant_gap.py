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

    python scripts/quant_gap.py logs/<run_id> --try gdn.out:8 gdn.out:8,gdn.v:8 matrix_clip_k=10 [--compressors brotli]

What another export would buy: each --try re-exports the run with its comma-separated entries on top of the run's
export config. group:bits entries join `export.group_bits` (gdn.out:8: GDN's out projections at 8 bits); key=value
entries set the export keys that need no other calibration (TRY_KEYS: bits, clip_k, keep_float_max_numel, GPTQ's).
The Hessians are the run's own, recomputed from the same calibration sequences (the train split from where training
stopped, or the model's own samples with the run's seeds), so a --try that changes nothing rebuilds the run's
artifact (exactly on CPU). Per --try: the tensors whose (bits, clip_k) changed, val_bpb, the gap and its change
against the run's, then the artifact's exact bytes (built as the trainer builds it, with the run's compressors or
--compressors), and the total with the code against the 16,000,000-byte limit.
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
    parser.add_argument("--try", dest="variants", nargs="+", default=[], metavar="GROUP:BITS|KEY=VALUE[,...]",
                        help="re-export with these group_bits entries / export keys on top of the run's; gap and bytes")
    parser.add_argument("--compressors", nargs="+", help="for --try artifacts (default: the run's export.compressors)")
    parser.add_argument("--no-groups", action="store_true", help="only the float and all rows (then the --try rows)")
    args = parser.parse_args()
    if args.val_tokens < 0:
        parser.error(f"--val-tokens {args.val_tokens}: expected >= 0 (0: all)")
    prefix, config_path, weights_path, artifact_path = run_files(args.run)
    cfg = tg.load_config(["--config", str(config_path)])
    results_path = prefix.with_name(prefix.name + ".results.json")
    ran = json.loads(results_path.read_text()) if results_path.is_file() else {}
    variants = [(v, variant_config(config_path, cfg, v, args.compressors)) for v in args.variants]  # bad input fails before any eval
    if variants and not {"tokens_seen", "world_size", "bytes_code"} <= ran.keys():
        raise FileNotFoundError(f"{results_path}: --try needs the run's results (tokens_seen, world_size, bytes_code)")
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

    def score_state(state: dict) -> dict:
        model.load_state_dict(state)
        return tg.evaluate(model, val, tables, cfg, d, [mode])[mode]

    def score(names: list[str]) -> dict:
        swap = set(names)
        return score_state({k: decoded[k] if k in swap else trained[k] for k in trained})

    def weight_err(names: list[str]) -> float:
        num = sum((decoded[k] - trained[k]).pow(2).sum().item() for k in names)
        return math.sqrt(num / max(sum(trained[k].pow(2).sum().item() for k in names), 1e-30))

    t0, rows = time.perf_counter(), []
    types, leaves = tensor_groups(changed, cfg.model.layout)
    splits = sorted((k, v) for k, v in leaves.items() if k not in types)
    order = [("float", []), ("all", changed)] + ([] if args.no_groups else sorted(types.items()) + splits)
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
          f"gap_bpb:{whole:+.6f}" + ("" if args.no_groups else f" sum_of_types:{sum(gap_of[k] for k in types):+.6f} "
          f"sum_of_leaves:{sum(gap_of[k] for k in leaves):+.6f}") + f" mode:{mode} device:{device.type} "
          f"time:{time.perf_counter() - t0:.1f}s")
    if ran.get("q_val_bpb") is not None:
        print(f"quant_gap_run_scores mode:{cfg.eval.modes[0]} val_bpb:{ran['val_bpb']:.8f} "
              f"q_val_bpb:{ran['q_val_bpb']:.8f} tokens:{ran['evals'][cfg.eval.modes[0]]['tokens']} (the run's own)")
    tries = []
    if variants:
        model.load_state_dict(trained)
        # The run's own Hessians with the trainer's hooks: a hooked o_proj runs its norm unfolded (another rounding), so
        # the matrices only a variant quantizes get a pass of their own.
        run_plan = tg.quant_plan(model, cfg.export)
        own = [n for n, spec in run_plan.items() if spec]
        more = sorted({n for _, x in variants for n, spec in tg.quant_plan(model, x).items() if spec} - set(own))
        hessians = run_hessians(cfg, model, ran, own, d) | (run_hessians(cfg, model, ran, more, d) if more else {})
        tries = try_exports(variants, run_plan, model, trained, decoded, hessians, score_state, base["val_bpb"], whole,
                            ran["bytes_code"], artifact_path.stat().st_size)
    if args.out:
        def timeless(table: list[dict]) -> list[dict]:
            return [{k: v for k, v in r.items() if k != "eval_time"} for r in table]
        Path(args.out).write_text(json.dumps(dict(run=str(config_path), artifact=str(artifact_path), mode=mode,
                                                  device=device.type, rows=timeless(rows), tries=timeless(tries)), indent=1))


TRY_KEYS = ("matrix_bits", "embed_bits", "matrix_clip_k", "embed_clip_k", "keep_float_max_numel", "gptq_block",
            "gptq_damp", "act_order")  # what a re-export may change; calibration keys would need other Hessians


def variant_config(config_path: Path, cfg, variant: str, compressors: list[str] | None) -> tg.ExportConfig:
    """The run's export config with `variant`'s entries: group:bits replacing or joining its export.group_bits, and
    key=value for the keys in TRY_KEYS; applied as overrides to the run's config file, so the trainer parses and checks
    them (a wrong type, range, group or compressor gets its own error)."""
    entries = variant.split(",")
    added = {item.partition(":")[0]: item for item in entries if "=" not in item}
    overrides = ["export.enabled=true"] + ([f"export.compressors=[{','.join(compressors)}]"] if compressors else [])
    for item in (e for e in entries if "=" in e):
        key = item.split("=", 1)[0].removeprefix("export.")
        if key not in TRY_KEYS:
            raise ValueError(f"--try {variant!r}: {item.split('=', 1)[0]!r} is not an export key a re-export can change "
                             f"({', '.join(TRY_KEYS)}, or group:bits)")
        overrides.append("export." + item.removeprefix("export."))
    group_bits = [item for item in cfg.export.group_bits if str(item).partition(":")[0] not in added] + list(added.values())
    return tg.load_config(["--config", str(config_path), *overrides, f"export.group_bits=[{','.join(group_bits)}]"]).export


def run_hessians(cfg, model, ran: dict, names: list[str], d) -> dict:
    """The run's GPTQ Hessians again: its calibration sequences through its trained weights (loaded in `model`)."""
    x, calib_len = cfg.export, cfg.export.calib_seq_len or cfg.train.seq_len
    if x.calib_source == "train":  # the trainer reads them from where training stopped: steps * global batch tokens
        stream = tg.TokenStream(cfg.data.train_files, cfg.model.vocab_size)
        batches = tg.calibration_batches(stream, ran["tokens_seen"], x.calib_seqs, calib_len, cfg.train.micro_batch_seqs, d)
        return tg.collect_hessians(model, batches, names, d)
    world = ran["world_size"]  # self-generated: rank r sampled its share with seed + r; the trainer summed over ranks
    samples = [tg.generate_tokens(model, len(range(r, x.calib_seqs, world)), calib_len, d, cfg.train.seed + r)
               for r in range(world)]
    return tg.collect_hessians(model, [t for s in samples for t in s.split(cfg.train.micro_batch_seqs)], names, d)


def try_exports(variants, run_plan: dict, model, trained, decoded, hessians, score_state, float_bpb: float, whole: float,
                bytes_code: int, run_bytes: int) -> list[dict]:
    """Each variant re-quantized with the run's Hessians and scored (a line each); then all its artifacts built side by
    side (brotli and lzma release the GIL) and their bytes printed."""
    from concurrent.futures import ThreadPoolExecutor
    tries, exports = [], []
    for text, xcfg in variants:
        model.load_state_dict(trained)
        plan, quantized = tg.quant_plan(model, xcfg), tg.quantize_model(model, hessians, xcfg)
        state = tg.dequantize(quantized)
        row = dict(variant=text, group_bits=list(xcfg.group_bits), retuned=sum(plan[n] != run_plan[n] for n in plan),
                   as_artifact=sum(torch.equal(state[k], decoded[k]) for k in state), tensors=len(state), **score_state(state))
        row.update(gap_bpb=row["val_bpb"] - float_bpb, gap_change_bpb=row["val_bpb"] - float_bpb - whole)
        print(f"quant_gap_try try:{text} retuned_tensors:{row['retuned']} "
              f"tensors_as_in_artifact:{row['as_artifact']}/{row['tensors']} val_bpb:{row['val_bpb']:.8f} "
              f"gap_bpb:{row['gap_bpb']:+.6f} gap_change_bpb:{row['gap_change_bpb']:+.6f}", flush=True)
        tries.append(row)
        exports.append((quantized, xcfg.compressors))
    with ThreadPoolExecutor(len(exports)) as pool:
        blobs = list(pool.map(lambda job: tg.build_artifact(*job)[0], exports))
    for row, blob in zip(tries, blobs):
        row.update(bytes_model=len(blob), bytes_change=len(blob) - run_bytes, bytes_total=bytes_code + len(blob))
        print(f"quant_gap_try_bytes try:{row['variant']} bytes_model:{len(blob)} "
              f"bytes_change:{len(blob) - run_bytes:+d} bytes_total:{bytes_code + len(blob)} "
              f"fits:{bytes_code + len(blob) <= tg.ARTIFACT_LIMIT} gap_change_bpb:{row['gap_change_bpb']:+.6f}", flush=True)
    return tries


if __name__ == "__main__":
    main()

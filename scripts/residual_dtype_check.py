#!/usr/bin/env python3
"""Per-step check of model.bf16_residual on CPU: the bf16 and the fp32 residual stream under bf16 autocast, same
init, same batches, same constant learning rates (no schedule, so steps compare one to one), N steps of a small
gdn_hybrid (width 128). Prints the mean train loss of every 50 steps and a val loss on held-out batches.

    python scripts/residual_dtype_check.py --data-dir data/datasets/debian_docs_sp8192 --steps 400
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train_gpt as tg  # noqa: E402

BATCH = 16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="a shard directory (train_gpt's format) with *train* and *val* shards")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence; 16 sequences per batch")
    parser.add_argument("--val-batches", type=int, default=8)
    args = parser.parse_args()
    shards = {split: sorted(Path(args.data_dir).glob(f"*_{split}_*.bin")) for split in ("train", "val")}
    for split, paths in shards.items():
        if not paths:
            parser.error(f"--data-dir {args.data_dir}: no *_{split}_*.bin shard")
    SEQ = args.seq_len
    tokens, val = (np.fromfile(shards[s][0], dtype=np.uint16, offset=tg.SHARD_HEADER_WORDS * 4) for s in ("train", "val"))
    for split, arr, batches in (("train", tokens, args.steps), ("val", val, args.val_batches)):
        if len(arr) < batches * BATCH * SEQ + 1:
            parser.error(f"{shards[split][0]}: {len(arr)} tokens, too few for {batches} batches of {BATCH} x {SEQ}")

    def batch(arr, i):
        t = torch.from_numpy(arr[i * BATCH * SEQ: (i + 1) * BATCH * SEQ + 1].astype(np.int64))
        return t[:-1].view(BATCH, SEQ), t[1:].view(BATCH, SEQ)

    for bf16_residual in (False, True):
        cfg = tg.load_config(["model=gdn_hybrid", "model.model_dim=128", "model.num_heads=2", "model.num_kv_heads=1",
                              "model.gdn_heads=2", f"model.bf16_residual={bf16_residual}"])
        torch.manual_seed(0)
        model = tg.GPT(cfg.model)
        opts = tg.build_optimizers(model, cfg.train, tg.Dist(0, 1, 0, torch.device("cpu")))
        losses = []
        for step in range(args.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(*batch(tokens, step))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip_norm)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if (step + 1) % 50 == 0:
                print(f"bf16_residual:{bf16_residual} step:{step + 1} train_loss(mean of last 50):{np.mean(losses[-50:]):.4f}",
                      flush=True)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            val_loss = np.mean([model(*batch(val, i)).item() for i in range(args.val_batches)])
        print(f"bf16_residual:{bf16_residual} val_loss:{val_loss:.4f}", flush=True)


if __name__ == "__main__":
    main()

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
    parser.add_argument("--data-dir", required=True,
                        help="a shard directory (train_gpt's format) with *_train_* and *_val_* shards")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per sequence; 16 sequences per batch")
    parser.add_argument("--val-batches", type=int, default=8)
    args = parser.parse_args()
    SEQ, streams = args.seq_len, {}
    for split, batches in (("train", args.steps), ("val", args.val_batches)):
        if not list(Path(args.data_dir).glob(f"*_{split}_*.bin")):
            parser.error(f"--data-dir {args.data_dir}: no *_{split}_*.bin shard")
        streams[split] = stream = tg.TokenStream(f"{args.data_dir}/*_{split}_*.bin")  # checks headers and sizes
        if stream.total < batches * BATCH * SEQ + 1:  # the stream would wrap around: batches would repeat
            parser.error(f"{', '.join(stream.files)}: {stream.total} tokens, too few for {batches} batches of "
                         f"{BATCH} x {SEQ}")

    def batch(split, i):
        t = torch.from_numpy(streams[split].read(i * BATCH * SEQ, BATCH * SEQ + 1))
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
                loss = model(*batch("train", step))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip_norm)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if (step + 1) % 50 == 0:
                mean = np.mean(losses[-50:])
                print(f"bf16_residual:{bf16_residual} step:{step + 1} train_loss(mean of last 50):{mean:.4f}", flush=True)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            val_loss = np.mean([model(*batch("val", i)).item() for i in range(args.val_batches)])
        print(f"bf16_residual:{bf16_residual} val_loss:{val_loss:.4f}", flush=True)


if __name__ == "__main__":
    main()

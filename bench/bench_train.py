"""Training throughput: Ray Train + DeepSpeed ZeRO 0/2/3 on 2 CPU workers vs a plain single-process
torch loop, same rows, same texts, same micro-batch, MiniLM. Run with nothing else on the machine.

    python bench/bench_train.py --rows 320 [key.path=value ...] [--stages 0 2 3]
"""
import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from nightscore import synth
from nightscore.config import load_config
from nightscore.model.network import CreditModel, pad_batch
from nightscore.model.store import resolve_backbone
from nightscore.model.tokens import pad_token_id, tokenize, tokenizer_for
from nightscore.serialize import serialize
from nightscore.training.data import multi_hot
from nightscore.training.trainer import train

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "local.yaml"


def plain_loop(cfg, table, threads: int) -> tuple[float, float]:
    """The baseline: one process, all cores, the same model, loss, micro-batches and optimizer
    steps (gradients accumulated over the same global batch as the Ray Train run).
    Returns (samples/s over the run, samples/s after the first optimizer step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = resolve_backbone(cfg.model.backbone)
    tok, pad_id = tokenizer_for(path), pad_token_id(path)
    ids = tokenize(serialize(table, cfg.schema, cfg.serialize), tok, cfg.model.max_length).to_pylist()
    products = synth.catalog_product_ids(cfg.products.catalog)
    y = torch.tensor(table.column("default_12m").to_numpy(zero_copy_only=False).astype(np.float32))
    yp = torch.tensor(multi_hot(table.column("products_acquired_90d"), products))
    model = CreditModel.build(path, cfg.model.pooling, len(products), True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    mb = cfg.train.micro_batch
    accum = cfg.train.grad_accum * cfg.train.num_workers  # micro-batches per optimizer step, as in Ray Train
    t0 = time.time()
    warm = None
    for i, start in enumerate(range(0, len(ids), mb), 1):
        x, mask = pad_batch([np.array(r) for r in ids[start:start + mb]], pad_id)
        out = model(x, mask)
        loss = bce(out["default_logit"], y[start:start + mb]) + bce(out["product_logits"], yp[start:start + mb])
        (loss / accum).backward()
        if i % accum == 0 or start + mb >= len(ids):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            warm = warm or (time.time(), start + mb)
    end = time.time()
    return len(ids) / (end - t0), (len(ids) - warm[1]) / (end - warm[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=320, help="training rows per run")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    # every row is a training row: the validation split is kept tiny and not timed
    cfg = load_config(CONFIG, ["train.epochs=1", "train.valid_fraction=0.02", *args.overrides])
    n = int(args.rows / (1 - cfg.train.valid_fraction)) + 1
    table, _ = synth.generate(n, dt.date(2026, 11, 1), 0, synth.catalog_product_ids(cfg.products.catalog), labels=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        part = Path(tmp) / "data" / "date=2026-11-01"
        part.mkdir(parents=True)
        pq.write_table(table, part / "part-0.parquet")
        results["plain torch loop (1 process, 2 threads)"] = plain_loop(cfg, table.slice(0, args.rows), 2)
        for stage in args.stages:
            c = load_config(CONFIG, ["train.epochs=1", "train.valid_fraction=0.02", f"train.zero_stage={stage}",
                                     *args.overrides])
            summary = train(c, str(part), None, f"{tmp}/model-{stage}", storage_path=f"{tmp}/runs", run_name=f"z{stage}")
            best = summary["best"]
            results[f"Ray Train + DeepSpeed ZeRO-{stage} (2 workers)"] = (best["train_samples_per_s"],
                                                                          best["steady_samples_per_s"])
    base = results["plain torch loop (1 process, 2 threads)"]
    print(json.dumps(results, indent=2))
    print("\n| setup | samples/s (whole epoch) | × plain | samples/s (after 1st step) | × plain |\n|---|---:|---:|---:|---:|")
    for name, (rate, steady) in results.items():
        print(f"| {name} | {rate:.2f} | {rate / base[0]:.2f} | {steady:.2f} | {steady / base[1]:.2f} |")


if __name__ == "__main__":
    main()

"""Training throughput: Ray Train + DeepSpeed ZeRO 0/2/3 on 2 CPU workers vs a plain single-process
torch loop, same rows, same model input (feature tokens, then text), same micro-batch, MiniLM.
Run with nothing else on the machine.

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

from nightscore import encode, synth
from nightscore.config import load_config
from nightscore.model.features import to_tensors
from nightscore.model.store import resolve_backbone
from nightscore.model.tokens import tokenizer_for
from nightscore.training.data import multi_hot
from nightscore.training.loop import build_model
from nightscore.training.trainer import train

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "local.yaml"


def plain_loop(cfg, table, threads: int) -> tuple[float, float]:
    """The baseline: one process, all cores, the same model, loss, micro-batches and optimizer
    steps (gradients accumulated over the same global batch as the Ray Train run).
    The rows are encoded as model_input encodes them for a model directory, with encoders fitted
    on these rows as the training job fits its own (there is no model directory yet).
    Returns (samples/s over the run, samples/s after the first optimizer step)."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = resolve_backbone(cfg.model.backbone)
    tok = tokenizer_for(path)
    encoders = encode.fit(table, cfg.schema, cfg.model, tok, path)
    inputs, _ = encode.encode(table, encoders, cfg.schema, tok)
    n = inputs.num_rows
    products = synth.catalog_product_ids(cfg.products.catalog)
    y = torch.tensor(table.column("default_12m").to_numpy(zero_copy_only=False).astype(np.float32))
    yp = torch.tensor(multi_hot(table.column("products_acquired_90d"), products))
    model = build_model(cfg, len(products), encoders)  # as Ray Train's workers build it (frozen word embeddings)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    mb = cfg.train.micro_batch
    accum = cfg.train.grad_accum * cfg.train.num_workers  # micro-batches per optimizer step, as in Ray Train
    t0 = time.time()
    warm = None
    for i, start in enumerate(range(0, n, mb), 1):
        x = to_tensors(inputs.slice(start, mb))
        out = model(x)
        loss = bce(out["default_logit"], y[start:start + mb]) + bce(out["product_logits"], yp[start:start + mb])
        (loss / accum).backward()
        if i % accum == 0 or start + mb >= n:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
            warm = warm or (time.time(), start + mb)
    end = time.time()
    return n / (end - t0), (n - warm[1]) / (end - warm[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=320, help="training rows per run")
    p.add_argument("--stages", type=int, nargs="+", default=[0, 2, 3])
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    # ~rows training rows: the validation split is kept tiny; it and the calibration rows are not timed
    cfg = load_config(CONFIG, ["train.epochs=1", "train.valid_fraction=0.02", *args.overrides])
    n = int(args.rows / (1 - cfg.train.valid_fraction - cfg.train.calibration_fraction)) + 1
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

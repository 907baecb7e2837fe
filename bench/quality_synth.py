"""Quality on synthetic data, where the truth is known: nightscore (MiniLM fine-tuned through the
training job) against the generator's own default probabilities and take-up propensities (the
oracle), beside logistic regression and LightGBM trained on exactly the rows nightscore trains on.

    python bench/quality_synth.py [--train-rows 20000] [--test-rows 4000] [key.path=value ...]

Default: AUC of pd_12m on held-out test rows (fresh customers, another seed). Products:
NDCG@k of the propensity ranking over customers who took a product up, with held products
masked for every ranker (a held product is never recommended).
"""
import argparse
import datetime as dt
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from nightscore import metrics as M
from nightscore import synth
from nightscore.config import load_config
from nightscore.model import store
from nightscore.scoring.inference import Predictor
from nightscore.scoring.prepare import model_input
from nightscore.training.data import TRAIN, multi_hot, roles
from nightscore.training.trainer import train

import baselines

ORACLE = "oracle (generator's true PD / propensities)"
CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "local.yaml"
DATE = dt.date(2026, 10, 31)


def write(table: pa.Table, root: Path, files: int = 4) -> str:
    part = root / f"date={DATE}"
    part.mkdir(parents=True)
    step = math.ceil(table.num_rows / files)
    for i in range(files):
        pq.write_table(table.slice(i * step, step), part / f"part-{i:05d}.parquet")
    return str(root)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train-rows", type=int, default=20_000,
                   help="rows the models train on (validation and calibration rows extra)")
    p.add_argument("--test-rows", type=int, default=4_000)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(CONFIG, args.overrides)
    k = cfg.products.top_k
    product_ids = synth.catalog_product_ids(cfg.products.catalog)
    t = cfg.train
    n = math.ceil(args.train_rows / (1 - t.valid_fraction - t.calibration_fraction) * 1.01)
    train_t, _ = synth.generate(n, DATE, 1, product_ids, labels=True)
    test_t, truth = synth.generate(args.test_rows, DATE, 2, product_ids, labels=True, id_offset=500_000_000)

    # the rows nightscore trains on: neither its validation nor its calibration rows (the same hash
    # split as training/data.py)
    role = roles(train_t.column(cfg.schema.id), t.valid_fraction, t.calibration_fraction)
    fit_rows = train_t.filter(pa.array(role == TRAIN))
    y_fit = fit_rows.column("default_12m")
    labelled = pc.is_valid(y_fit).to_numpy(zero_copy_only=False)
    y_test_col = test_t.column("default_12m")
    known = pc.is_valid(y_test_col).to_numpy(zero_copy_only=False)
    y_test = pc.fill_null(y_test_col, False).to_numpy(zero_copy_only=False).astype(bool)[known]
    rel = multi_hot(test_t.column("products_acquired_90d"), product_ids)
    held = multi_hot(test_t.column("products_held"), product_ids) > 0

    pd_by: dict[str, np.ndarray] = {ORACLE: truth.column("true_pd").to_numpy()}
    prop_by: dict[str, np.ndarray] = {ORACLE: np.stack([truth.column(f"p_{p}").to_numpy() for p in product_ids], 1)}
    t0 = time.time()
    default_base = baselines.fit_predict(fit_rows.filter(pa.array(labelled)), test_t, cfg,
                                         y_fit.filter(pa.array(labelled)).to_numpy(zero_copy_only=False).astype(int))
    product_base = baselines.fit_predict(fit_rows, test_t, cfg, multi_hot(fit_rows.column("products_acquired_90d"), product_ids))
    pd_by.update(default_base)
    prop_by.update(product_base)
    print(f"[quality] baselines fitted in {time.time() - t0:.0f} s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        summary = train(cfg, write(train_t, Path(tmp) / "train"), None, f"{tmp}/model", storage_path=f"{tmp}/runs",
                        run_name="quality")
        train_s = time.time() - t0
        loaded = store.load(f"{tmp}/model")
        mcfg = loaded.config
        inputs, _ = model_input(test_t, mcfg, str(loaded.root))
        preds = Predictor(loaded, precision="fp32", micro_batch=cfg.score.micro_batch).predict(inputs)
        order = [loaded.meta["product_ids"].index(p) for p in product_ids]
        pd_by["nightscore (MiniLM, feature tokens)"] = preds.pd
        prop_by["nightscore (MiniLM, feature tokens)"] = preds.propensity[:, order]

    rows = {}
    for name in pd_by:
        rows[name] = {"auc": M.auc(y_test, pd_by[name][known]), "ks": M.ks(y_test, pd_by[name][known]),
                      **M.product_metrics(rel, prop_by[name], k, held)}
    oracle = rows[ORACLE]
    result = {"train_rows": fit_rows.num_rows, "validation_rows": train_t.num_rows - fit_rows.num_rows,
              "test_rows": test_t.num_rows, "test_default_rate": float(y_test.mean()), "train_seconds": train_s,
              "nightscore_validation": summary["best"], "models": rows}
    print(json.dumps(result, indent=2, default=float))
    print(f"\n| model | default AUC | × oracle | KS | NDCG@{k} | × oracle | recall@{k} |\n|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows.items():
        print(f"| {name} | {r['auc']:.3f} | {r['auc'] / oracle['auc']:.3f} | {r['ks']:.3f} | {r[f'ndcg@{k}']:.3f} | "
              f"{r[f'ndcg@{k}'] / oracle[f'ndcg@{k}']:.3f} | {r[f'recall@{k}']:.3f} |")


if __name__ == "__main__":
    main()

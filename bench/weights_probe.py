"""German credit, in one process: what averaging one fine-tuning run's weights, training on every
row, or fitting the wide terms first would give, measured outside the product.

    cd bench && python weights_probe.py [--all-rows] [--prefit L] [--seeds N] [--value-text] [key.path=value ...]

The same folds as quality.py (5-fold stratified, seed 0), the same id-hash split, encoders,
model, parameter groups, learning-rate schedule and loss as the training job, in a plain torch
loop (one process, batch 32 = the job's two workers x 16; no DeepSpeed, no Ray). Each epoch it
reports validation and test AUC for the plain weights and for three averages of them kept
alongside (torch.optim.swa_utils): the mean of the epochs' end weights (SWA) and two
exponential moving averages over the steps. `--all-rows` trains on all of a fold's rows (its
validation AUC is then in-sample); `--prefit L` first fits the wide terms alone to convergence
(L-BFGS, L2 penalty L / rows, as a logistic regression is fitted) and also reports them alone;
`--seeds N` trains N models per fold (train.seed, +1, ...; each its own batch order) and also
reports the mean of their last-epoch logits (per-model rows then list N figures per fold);
`--value-text` starts each category's embedding from the backbone's words for the value.
"""
import argparse
import math
import tempfile

import numpy as np
import pyarrow as pa
import torch
from nightscore import encode
from nightscore import metrics as M
from nightscore.config import load_config
from nightscore.encode import CATEGORY_FIRST
from nightscore.model.features import to_tensors
from nightscore.model.store import resolve_backbone
from nightscore.model.tokens import tokenizer_for
from nightscore.training.data import TRAIN, VALID, roles, training_rows
from nightscore.training.loop import _loss, build_model, lr_schedule, param_groups
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from quality import CONFIG, folds, german_credit

BATCH = 32


def predict(model: torch.nn.Module, rows: pa.Table) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        z = torch.cat([model(to_tensors(rows, np.arange(i, min(i + 256, rows.num_rows))))["default_logit"]
                       for i in range(0, rows.num_rows, 256)])
    model.train()
    return z.numpy()


def prefit_wide(model, rows: pa.Table, y: np.ndarray, penalty: float) -> None:
    """The wide terms alone (on top of the base-rate logit) to the L2-penalised optimum."""
    x, prior = to_tensors(rows), math.log(y.mean() / (1 - y.mean()))
    params = [p for p in model.wide.parameters() if p.requires_grad]
    lbfgs = torch.optim.LBFGS(params, max_iter=500, line_search_fn="strong_wolfe")
    target = torch.tensor(y)

    def closure():
        lbfgs.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model.wide(x)[:, 0] + prior, target)
        loss = loss + penalty / len(y) * sum((p ** 2).sum() for p in params)
        loss.backward()
        return loss
    lbfgs.step(closure)


def value_text_init(model, enc, tok) -> None:
    """Each category's embedding started as the backbone's mean word embedding of the value's own
    text (as the identity starts from the label's), instead of at random."""
    words = model.backbone.get_input_embeddings()
    with torch.no_grad():
        for i, vocab in enumerate(enc.categorical):
            first = int(model.features.category_offsets[i]) + CATEGORY_FIRST
            for j, value in enumerate(vocab.values):
                ids = encode._tokens(tok, value)
                if ids:
                    model.features.categories.weight[first + j] = words(torch.tensor(ids)).mean(0)


def fit(cfg, enc, rows: dict, ys: dict, seed: int, k: int, args, results: dict, tok) -> dict[str, np.ndarray]:
    """One model (train.seed = seed) on rows["fit"]: each weights' best-validation and last-epoch test
    AUC go into `results`; returns each weights' last-epoch test logits."""
    t = cfg.train
    torch.manual_seed(seed)
    model = build_model(cfg, 0, enc)
    model.init_priors(default_rate=float(ys["fit"].mean()), product_rates=None)
    if args.value_text:
        value_text_init(model, enc, tok)
    if args.prefit is not None:
        prefit_wide(model, rows["fit"], ys["fit"], args.prefit)
        with torch.no_grad():
            z = model.wide(to_tensors(rows["test"]))[:, 0].numpy()
        results.setdefault("wide terms alone, pre-fitted", []).append(M.auc(ys["test"], z))
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=t.weight_decay)
    steps = math.ceil(len(ys["fit"]) / BATCH)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(steps * t.epochs, t.warmup_fraction))
    swa = AveragedModel(model)  # updated once per epoch
    emas = {f"EMA {d}": AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d)) for d in (0.98, 0.995)}
    order = np.random.default_rng(k if seed == t.seed else (k, seed))  # train.seed's order as before --seeds
    epochs = []
    for epoch in range(1, t.epochs + 1):
        for b in np.array_split(order.permutation(len(ys["fit"])), steps):
            batch = {"y_default": torch.tensor(ys["fit"][b]), "has_default": torch.ones(len(b))}
            loss = _loss(model(to_tensors(rows["fit"], b)), batch, cfg)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            for ema in emas.values():
                ema.update_parameters(model)
        swa.update_parameters(model)
        weights = {"plain": model, "SWA (epochs' mean)": swa.module, **{n: e.module for n, e in emas.items()}}
        aucs = {name: tuple(M.auc(ys[s], predict(m, rows[s])) for s in ("valid", "test"))
                for name, m in weights.items()}
        epochs.append(aucs)
        print(f"fold {k + 1} epoch {epoch}: " + "  ".join(f"{n} valid {v:.3f} test {s:.3f}"
                                                          for n, (v, s) in aucs.items()), flush=True)
    for name in epochs[0]:
        best = max(range(len(epochs)), key=lambda i: epochs[i][name][0])
        results.setdefault(f"{name}, best validation epoch", []).append(epochs[best][name][1])
        results.setdefault(f"{name}, last epoch", []).append(epochs[-1][name][1])
    return {name: predict(m, rows["test"]) for name, m in weights.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--all-rows", action="store_true", help="train on all of a fold's rows")
    p.add_argument("--prefit", type=float, default=None, metavar="L", help="fit the wide terms first, L2 penalty L / rows")
    p.add_argument("--seeds", type=int, default=1,
                   help="train N models per fold (train.seed + 0..N-1), also report their logits' mean")
    p.add_argument("--value-text", action="store_true", help="start category embeddings from their values' words")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    torch.set_num_threads(2)
    cfg = load_config(CONFIG, args.overrides)
    t = cfg.train
    backbone = resolve_backbone(cfg.model.backbone)
    tok = tokenizer_for(backbone)
    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        table, y = german_credit(cfg, tmp)
    for k, (tr, te) in enumerate(folds(y, 5, 0)):
        train_t, test_t = table.take(tr), table.take(te)
        role = roles(train_t.column(cfg.schema.id), t.valid_fraction, t.calibration_fraction)
        own = train_t.filter(pa.array(role == TRAIN))  # the job's training rows: the encoders fit on these
        fit_t = train_t if args.all_rows else own
        enc = encode.fit(own, cfg.schema, cfg.model, tok, backbone)
        rows = {name: training_rows(x, cfg, enc, tok, []).combine_chunks()
                for name, x in (("fit", fit_t), ("valid", train_t.filter(pa.array(role == VALID))), ("test", test_t))}
        ys = {name: r.column("y_default").to_numpy() for name, r in rows.items()}
        ensemble: dict[str, list[np.ndarray]] = {}
        for seed in range(t.seed, t.seed + args.seeds):
            for name, z in fit(cfg, enc, rows, ys, seed, k, args, results, tok).items():
                ensemble.setdefault(name, []).append(z)
        if args.seeds > 1:
            for name, zs in ensemble.items():
                results.setdefault(f"{name}, mean of {args.seeds} seeds' last-epoch logits", []).append(
                    M.auc(ys["test"], np.mean(zs, axis=0)))
    print("\n| weights | test AUC mean ± sd | per fold |\n|---|---|---|")
    for name, v in results.items():
        print(f"| {name} | {np.mean(v):.3f} ± {np.std(v, ddof=1):.3f} | {' / '.join(f'{a:.3f}' for a in v)} |")


if __name__ == "__main__":
    main()

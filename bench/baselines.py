"""The models a credit-risk team would fit instead: logistic regression and LightGBM on the
configured in-model features (numeric scaled, categoricals / booleans one-hot, list columns
multi-hot; free text is left out, as a tabular model would). Shared by the quality benchmarks.
"""
from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nightscore.schema import model_features
from nightscore.training.data import multi_hot

NAMES = ("logistic regression", "LightGBM")


def frame(table: pa.Table, cfg) -> tuple[pd.DataFrame, list[str], list[str]]:
    """In-model features as a DataFrame: (frame, numeric columns, categorical columns)."""
    cols: dict[str, object] = {}
    num, cat = [], []
    for f in model_features(cfg.schema):
        col = table.column(f.name)
        if f.kind == "numeric":
            cols[f.name] = col.to_numpy(zero_copy_only=False).astype(float)
            num.append(f.name)
        elif f.kind in ("categorical", "boolean"):
            cols[f.name] = pc.cast(col, pa.string()).to_numpy(zero_copy_only=False)
            cat.append(f.name)
        elif f.kind == "list":
            values = sorted(set(pc.list_flatten(col).to_pylist()) - {None})
            hot = multi_hot(pc.fill_null(col, pa.scalar([], col.type)), values)
            for j, v in enumerate(values):
                cols[f"{f.name}={v}"] = hot[:, j]
                num.append(f"{f.name}={v}")
    df = pd.DataFrame(cols)
    df[num] = df[num].fillna(df[num].median())  # nullable numerics (e.g. "never delinquent") get the median
    return df, num, cat


def _models(num: list[str], cat: list[str]):
    lr = make_pipeline(ColumnTransformer([("num", StandardScaler(), num),
                                          ("cat", OneHotEncoder(handle_unknown="ignore"), cat)]),
                       LogisticRegression(max_iter=2000, C=0.5))
    gbm = lgb.LGBMClassifier(n_estimators=300, learning_rate=0.03, num_leaves=8, min_child_samples=20,
                             subsample=0.8, subsample_freq=1, colsample_bytree=0.8, random_state=0, verbose=-1)
    return lr, gbm


def fit_predict(train_t: pa.Table, test_t: pa.Table, cfg, y_train: np.ndarray) -> dict[str, np.ndarray]:
    """P(y=1) on the test rows from each baseline; y_train is (n,) for one label or (n, k) for k labels."""
    Xtr, num, cat = frame(train_t, cfg)
    Xte, _, _ = frame(test_t, cfg)
    Xte = Xte.reindex(columns=Xtr.columns, fill_value=0.0)
    gtr, gte = Xtr.copy(), Xte.copy()
    for c in cat:  # LightGBM takes categoricals natively
        gtr[c] = gtr[c].astype("category")
        gte[c] = pd.Categorical(gte[c], categories=gtr[c].cat.categories)
    ys = y_train.reshape(len(y_train), -1)
    out = {name: np.zeros((len(Xte), ys.shape[1])) for name in NAMES}
    for j in range(ys.shape[1]):
        y = ys[:, j].astype(int)
        if y.min() == y.max():  # a label nobody (or everybody) has: predict its base rate
            for name in NAMES:
                out[name][:, j] = float(y[0])
            continue
        lr, gbm = _models(num, cat)
        out[NAMES[0]][:, j] = lr.fit(Xtr, y).predict_proba(Xte)[:, 1]
        out[NAMES[1]][:, j] = gbm.fit(gtr, y).predict_proba(gte)[:, 1]
    return {name: p if y_train.ndim > 1 else p[:, 0] for name, p in out.items()}

"""The evaluation job on a small labelled synthetic set: metrics JSON, plots, HTML."""
import datetime as dt
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import LOCAL_CONFIG, REPO, scoring_config
from nightscore import synth
from nightscore.config import load_config
from nightscore.evaluation import evaluate

DATE = dt.date(2026, 11, 23)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    part = tmp_path_factory.mktemp("eval") / f"date={DATE}"
    part.mkdir()
    table, _ = synth.generate(400, DATE, 8, synth.catalog_product_ids("builtin:catalog.yaml"), labels=True)
    pq.write_table(synth.corrupt(table, load_config(LOCAL_CONFIG).schema, 0.05, seed=1), part / "part-0.parquet")
    return str(part)


def test_evaluate_metrics(tiny_model_dir, tiny_backbone, labelled):
    result, arrays = evaluate(scoring_config(tiny_backbone), tiny_model_dir, labelled)
    assert result["input_rows"] == 400 and result["evaluated_rows"] + result["quarantined_rows"] == 400
    for key in ("auc", "gini", "ks", "brier", "logloss", "ece", "recall@5", "ndcg@5", "map@5"):
        assert np.isfinite(result[key]), key
    assert result["gini"] == pytest.approx(2 * result["auc"] - 1)
    assert len(arrays["pd"]) == len(arrays["y"]) == len(arrays["score"])


def test_evaluate_job_writes_metrics_and_plots(tiny_model_dir, tiny_backbone, labelled, tmp_path):
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--model", tiny_model_dir,
                        "--data", labelled, "--out", str(out), f"model.backbone={tiny_backbone}",
                        "score.precision=fp32"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"auc", "ks", "brier", "ece", "calibration"} <= set(metrics)
    for png in ("roc.png", "ks.png", "calibration.png", "score_by_outcome.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 4


def test_evaluate_job_bad_model_exits_1(labelled, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "evaluate.py"), "--model", str(tmp_path / "nope"),
                        "--data", labelled, "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and "does not exist" in r.stderr

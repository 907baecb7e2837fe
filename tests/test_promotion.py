"""Promotion: the pointer moves on passing back-test evidence or an override with a reason, and
every attempt is appended to the audit log (on disk and on S3, concurrent writers included)."""
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import LOCAL_CONFIG, REPO
from nightscore import backtest, partition, promotion, storage
from nightscore.model import store
from test_backtest import CFG, DATE, population, scores_table, truth_arrays, write_outcomes  # noqa: F401


def promote_job(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "jobs" / "promote.py"), "--config", str(LOCAL_CONFIG), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def committed_scores(root, population, model: str, scale: float) -> str:
    """Scores (oracle PDs x scale) committed at `root` with a manifest naming `model`."""
    snap, truth = population
    pd, propensity = truth_arrays(truth)
    fs, path = storage.filesystem(str(root))
    rel = "run=r1/scores/part-0.parquet"
    storage.write_parquet(scores_table(snap.column("customer_id"), np.minimum(pd * scale, 1.0), propensity), fs,
                          storage.join(partition.date_dir(path, DATE), rel))
    partition.commit(fs, path, DATE, {"run_id": "r1", "files": {"scores": [rel], "quarantine": []},
                                      "model_uri": model, "model_version": "v",
                                      "model_manifest_sha256": store.manifest_sha256(model)})
    return str(root)


def backtested(tmp_path, population, model: str, scale: float, challenger: tuple[str, float] | None = None) -> str:
    """A reports root holding a back-test of `model`'s scores (and a challenger's beside them)."""
    snap, _ = population
    outcomes = write_outcomes(tmp_path / "outcomes",
                              snap.select(["customer_id", "default_12m", "products_acquired_90d"]))
    shadow = committed_scores(tmp_path / "shadow", population, *challenger) if challenger else None
    reports = str(tmp_path / "reports")
    backtest.run(CFG, committed_scores(tmp_path / "scores", population, model, scale), outcomes, DATE, reports,
                 shadow)
    return reports


def audit(pointer) -> list[dict]:
    return [json.loads(line) for line in (pointer.parent / promotion.AUDIT_LOG).read_text().splitlines()]


def test_refused_without_evidence_then_overridden_with_a_reason(tmp_path, tiny_model_dir):
    pointer = tmp_path / "APPROVED"
    r = promote_job("--pointer", str(pointer), "--model", tiny_model_dir, "--why", "looks fine",
                    "--reports", str(tmp_path / "reports"))
    assert r.returncode == 2 and "not promoted: no back-test of it" in r.stderr.splitlines()[-1]
    assert not pointer.exists()
    r = promote_job("--pointer", str(pointer), "--model", tiny_model_dir, "--why", "first model, validated in MV-17",
                    "--override")
    assert r.returncode == 0, r.stderr
    assert json.loads(pointer.read_text()) == {"model": tiny_model_dir,
                                               "manifest_sha256": store.manifest_sha256(tiny_model_dir)}
    refused, done = audit(pointer)
    assert (refused["promoted"], refused["override"], refused["why"]) == (False, False, "looks fine")
    assert (done["promoted"], done["override"], done["from"]) == (True, True, None)
    assert done["to"]["manifest_sha256"] == store.manifest_sha256(tiny_model_dir)
    assert {"at", "user", "host", "evidence"} <= set(done)
    assert promotion.in_force(str(pointer))["why"] == "first model, validated in MV-17"
    r = promote_job("--pointer", str(pointer), "--model", tiny_model_dir, "--why", " ", "--override")
    assert r.returncode == 2 and len(audit(pointer)) == 2


def test_promoted_on_a_passing_backtest_refused_on_a_failing_one(tmp_path, population, tiny_model_dir,
                                                                 tiny_challenger_dir):
    pointer = tmp_path / "APPROVED"
    promotion.promote(str(pointer), tiny_model_dir, "initial", override=True)
    reports = backtested(tmp_path / "good", population, tiny_challenger_dir, 1.0)
    r = promote_job("--pointer", str(pointer), "--model", tiny_challenger_dir, "--why", "beat the champion",
                    "--reports", reports)
    assert r.returncode == 0, r.stderr
    entry = audit(pointer)[-1]
    assert entry["evidence"]["passed"] and entry["evidence"]["role"] == "champion"
    assert entry["from"]["model"] == tiny_model_dir and entry["to"]["model"] == tiny_challenger_dir

    reports = backtested(tmp_path / "bad", population, tiny_model_dir, 1 / 3)  # under-estimated PDs fail
    r = promote_job("--pointer", str(pointer), "--model", tiny_model_dir, "--why", "roll back", "--reports", reports)
    assert r.returncode == 2 and "failed: failed_band_share" in r.stderr
    assert json.loads(pointer.read_text())["model"] == tiny_challenger_dir
    assert audit(pointer)[-1]["promoted"] is False and audit(pointer)[-1]["evidence"]["passed"] is False


def test_a_challengers_backtest_is_evidence(tmp_path, population, tiny_model_dir, tiny_challenger_dir):
    """A challenger passing its own thresholds and at least matching the champion's realised AUC
    passes (PD scaling leaves AUC alone: the gain is 0); a mis-calibrated one fails."""
    better = backtested(tmp_path / "a", population, tiny_model_dir, 0.5, (tiny_challenger_dir, 1.0))
    evidence = promotion.latest_backtest(better, store.manifest_sha256(tiny_challenger_dir))
    assert evidence["role"] == "challenger" and evidence["passed"]
    worse = backtested(tmp_path / "b", population, tiny_model_dir, 1.0, (tiny_challenger_dir, 1 / 3))
    evidence = promotion.latest_backtest(worse, store.manifest_sha256(tiny_challenger_dir))
    assert evidence["role"] == "challenger" and not evidence["passed"]
    assert promotion.latest_backtest(worse, store.manifest_sha256(tiny_model_dir))["role"] == "champion"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_concurrent_appends_lose_no_line(where, tmp_path, request):
    root = f"s3://{request.getfixturevalue('s3_bucket')}/models" if where == "s3" else str(tmp_path)
    log = f"{root}/{promotion.AUDIT_LOG}"
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: promotion.append(log, {"i": i}), range(12)))
    fs, path = storage.filesystem(log)
    with fs.open_input_stream(path) as f:
        lines = [json.loads(line) for line in f.read().decode().splitlines()]
    assert sorted(e["i"] for e in lines) == list(range(12))

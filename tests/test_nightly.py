"""The nightly job end to end: default date, scoring + report, back-test, champion/challenger and A/B,
drift alert exit code, idempotent rerun."""
import datetime as dt
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from conftest import LOCAL_CONFIG, REPO
from nightscore import partition
from nightscore.challenger import challenger_arm
from nightscore.config import load_config
from nightscore.model import store
from nightscore.nightly import default_date, model_uri
from nightscore.promotion import promote

pytestmark = pytest.mark.slow
DAY1, DAY2 = dt.date(2026, 11, 20), dt.date(2026, 11, 21)


def nightly(tmp_path, tiny_backbone, date, *extra):
    cmd = [sys.executable, str(REPO / "jobs" / "nightly.py"), "--date", str(date),
           f"nightly.snapshots={tmp_path}/snap", f"nightly.output={tmp_path}/scores",
           f"nightly.reports={tmp_path}/reports", f"model.backbone={tiny_backbone}", "model.max_length=128",
           "score.precision=fp32", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_model_without_reference_fails_before_scoring(tmp_path, tiny_model_dir, tiny_backbone):
    """The report compares against the model's reference population; a model without one
    (a products-only model) stops the run before anything is scored or committed (exit 1)."""
    draft = str(Path(tiny_model_dir).parent / "draft")  # conftest's model, saved before its reference
    subprocess.run([sys.executable, str(REPO / "jobs" / "make_snapshots.py"), "--out", str(tmp_path / "snap"),
                    "--customers", "200", "--date", str(DAY1)], check=True, capture_output=True)
    r = nightly(tmp_path, tiny_backbone, DAY1, f"nightly.model={draft}")
    assert r.returncode == 1, r.stderr[-2000:]
    assert "has no reference population" in r.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "scores").exists()


def test_default_date_is_yesterday_in_configured_zone():
    cfg = load_config(LOCAL_CONFIG, ["nightly.timezone=Australia/Sydney"])
    late_utc = dt.datetime(2026, 11, 27, 20, 0, tzinfo=dt.timezone.utc)  # already the 28th in Sydney
    assert default_date(cfg.nightly, late_utc) == dt.date(2026, 11, 27)
    assert default_date(load_config(LOCAL_CONFIG, ["nightly.timezone=UTC"]).nightly, late_utc) == dt.date(2026, 11, 26)


def test_nightly_config_errors_exit_2(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "nightly.py"), "nightly.model_pointer=x"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "set exactly one of model or model_pointer" in r.stderr
    r = subprocess.run([sys.executable, str(REPO / "jobs" / "nightly.py"), "nightly.timezone=Mars/Olympus"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown timezone" in r.stderr
    cfg = load_config(LOCAL_CONFIG, [f"nightly.model_pointer={tmp_path}/missing", "nightly.model=null"])
    with pytest.raises(Exception, match="does not exist"):
        model_uri(cfg.nightly, cfg)


def test_nightly_scores_backtests_runs_a_challenger_and_alerts_on_drift(tmp_path, tiny_model_dir,
                                                                       tiny_challenger_dir, tiny_backbone):
    """Night 1: the approved model (through the pointer), a challenger in shadow with an A/B share
    of its recommendations, and outcomes that have already landed (back-tested at once, both
    models). Night 2: a drifted population (exit 3) and a broken challenger, which leaves the
    champion's commit alone. Then a rerun of night 1 changes nothing."""
    make = [sys.executable, str(REPO / "jobs" / "make_snapshots.py"), "--out", str(tmp_path / "snap"),
            "--customers", "800", "--corrupt-fraction", "0.01"]
    subprocess.run(make + ["--date", str(DAY1), "--seed", "1", "--labels"], check=True, capture_output=True)
    subprocess.run(make + ["--date", str(DAY2), "--seed", "2", "--drift", "1.0"], check=True, capture_output=True)
    shutil.copytree(tmp_path / "snap" / f"date={DAY1}", tmp_path / "outcomes" / f"date={DAY1}")  # labels = outcomes
    pointer = tmp_path / "APPROVED"
    promote(str(pointer), tiny_model_dir, "approved for the test", override=True)
    common = [f"nightly.model_pointer={pointer}", "nightly.model=null", f"nightly.outcomes={tmp_path}/outcomes",
              "nightly.challenger_share=0.3", "backtest.min_auc=null", "backtest.max_failed_band_share=1.0"]

    r1 = nightly(tmp_path, tiny_backbone, DAY1, *common, f"nightly.challenger={tiny_challenger_dir}")
    assert r1.returncode == 0, r1.stdout + r1.stderr[-3000:]
    manifest = json.loads((tmp_path / "scores" / f"date={DAY1}" / "_manifest.json").read_text())
    assert manifest["model_manifest_sha256"] == store.manifest_sha256(tiny_model_dir)
    scores = partition.read(str(tmp_path / "scores"), DAY1)
    assert set(scores.column("run_id").to_pylist()) == {manifest["run_id"]}  # the shadow's rows never appear
    shadow = json.loads((tmp_path / "scores-challenger" / f"date={DAY1}" / "_manifest.json").read_text())
    assert shadow["model_manifest_sha256"] == store.manifest_sha256(tiny_challenger_dir)
    arm = challenger_arm(scores.column("customer_id"), 0.3, manifest["ab_test"]["salt"])
    assert scores.column("recommendation_arm").to_pylist() == np.where(arm, "challenger", "champion").tolist()
    assert manifest["ab_test"]["rows"] == {"champion": int((~arm).sum()), "challenger": int(arm.sum())}
    theirs = partition.read(str(tmp_path / "scores-challenger"), DAY1)
    recs = dict(zip(theirs.column("customer_id").to_pylist(), theirs.column("recommendations").to_pylist()))
    picked = scores.filter(pa.array(arm))
    assert picked.column("recommendations").to_pylist() == [recs[i] for i in picked.column("customer_id").to_pylist()]

    bt = json.loads((tmp_path / "reports" / f"date={DAY1}" / "backtest.json").read_text())
    assert bt["model"]["scores_run_id"] == manifest["run_id"] and bt["challenger"]["model"]["scores_run_id"]
    assert bt["coverage"]["scored"] == manifest["scored_rows"] and bt["ab_test"]["arms"]["challenger"]["customers"]
    report = json.loads((tmp_path / "reports" / f"date={DAY1}" / "report.json").read_text())
    assert report["status"] in ("ok", "warn") and report["scored_rows"] + report["quarantined_rows"] == 800
    assert report["challenger"]["customers"] == manifest["scored_rows"] and report["outcomes"][0]["date"] == str(DAY1)
    assert report["model_in_force"]["why"] == "approved for the test" and report["model_in_force"]["since"]
    html = (tmp_path / "reports" / f"date={DAY1}" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 6 and "http" not in html
    assert "back-tested" in r1.stdout and "challenger" in r1.stdout

    broken = tmp_path / "broken"
    shutil.copytree(tiny_challenger_dir, broken)
    (broken / "heads.safetensors").write_bytes(b"not the reviewed weights")
    r2 = nightly(tmp_path, tiny_backbone, DAY2, *common, f"nightly.challenger={broken}")
    assert r2.returncode == 3, r2.stdout + r2.stderr[-3000:]  # the drift alert, after committing
    assert "challenger failed" in r2.stdout
    assert set(partition.read(str(tmp_path / "scores"), DAY2).column("recommendation_arm").to_pylist()) == {"champion"}
    assert not (tmp_path / "scores-challenger" / f"date={DAY2}").exists()
    report2 = json.loads((tmp_path / "reports" / f"date={DAY2}" / "report.json").read_text())
    assert report2["status"] == "alert" and any(a["level"] == "alert" for a in report2["alerts"])
    assert "error" in report2["challenger"] and [p["date"] for p in report2["trend"]] == [str(DAY1), str(DAY2)]

    committed = (tmp_path / "scores" / f"date={DAY1}" / "_manifest.json").read_text()
    stamp = (tmp_path / "reports" / f"date={DAY1}" / "backtest.json").stat().st_mtime_ns
    r3 = nightly(tmp_path, tiny_backbone, DAY1, *common, f"nightly.challenger={tiny_challenger_dir}")
    assert r3.returncode == 0 and "already committed" in r3.stdout
    assert (tmp_path / "scores" / f"date={DAY1}" / "_manifest.json").read_text() == committed
    assert (tmp_path / "reports" / f"date={DAY1}" / "backtest.json").stat().st_mtime_ns == stamp

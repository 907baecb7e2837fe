"""The nightly job end to end: default date, scoring + report, drift alert exit code, idempotent rerun."""
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LOCAL_CONFIG, REPO
from nightscore.config import load_config
from nightscore.nightly import default_date, model_uri, pin_model

pytestmark = pytest.mark.slow
DAY1, DAY2 = dt.date(2026, 11, 20), dt.date(2026, 11, 21)


def nightly(tmp_path, tiny_backbone, date, *extra):
    cmd = [sys.executable, str(REPO / "jobs" / "nightly.py"), "--date", str(date),
           f"nightly.snapshots={tmp_path}/snap", f"nightly.output={tmp_path}/scores",
           f"nightly.reports={tmp_path}/reports", f"model.backbone={tiny_backbone}", "model.max_length=128",
           "score.precision=fp32", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_nightly_scores_reports_and_alerts_on_drift(tmp_path, tiny_model_dir, tiny_backbone):
    make = [sys.executable, str(REPO / "jobs" / "make_snapshots.py"), "--out", str(tmp_path / "snap"),
            "--customers", "800", "--corrupt-fraction", "0.01"]
    subprocess.run(make + ["--date", str(DAY1), "--seed", "1"], check=True, capture_output=True)
    subprocess.run(make + ["--date", str(DAY2), "--seed", "2", "--drift", "1.0"], check=True, capture_output=True)
    pointer = tmp_path / "APPROVED"
    pin_model(str(pointer), tiny_model_dir)

    r1 = nightly(tmp_path, tiny_backbone, DAY1, f"nightly.model_pointer={pointer}", "nightly.model=null")
    assert r1.returncode == 0, r1.stderr[-3000:]
    report = json.loads((tmp_path / "reports" / f"date={DAY1}" / "report.json").read_text())
    assert report["status"] in ("ok", "warn") and report["scored_rows"] + report["quarantined_rows"] == 800
    html = (tmp_path / "reports" / f"date={DAY1}" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "http" not in html
    assert (tmp_path / "scores" / f"date={DAY1}" / "_manifest.json").exists()

    r2 = nightly(tmp_path, tiny_backbone, DAY2, f"nightly.model={tiny_model_dir}")
    assert r2.returncode == 3, r2.stdout + r2.stderr[-3000:]  # alert, after committing
    assert (tmp_path / "scores" / f"date={DAY2}" / "_manifest.json").exists()
    report2 = json.loads((tmp_path / "reports" / f"date={DAY2}" / "report.json").read_text())
    assert report2["status"] == "alert" and any(a["level"] == "alert" for a in report2["alerts"])
    assert [p["date"] for p in report2["trend"]] == [str(DAY1), str(DAY2)]

    manifest = (tmp_path / "scores" / f"date={DAY1}" / "_manifest.json").read_text()
    r3 = nightly(tmp_path, tiny_backbone, DAY1, f"nightly.model={tiny_model_dir}")
    assert r3.returncode == 0 and "already committed" in r3.stdout
    assert (tmp_path / "scores" / f"date={DAY1}" / "_manifest.json").read_text() == manifest


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

"""`ray job submit` end to end: a real head on 127.0.0.1 with token auth, the score job uploaded
with --working-dir . and deploy/runtime_env.yaml, committed outputs checked, head stopped."""
import datetime as dt
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import REPO, free_port
from nightscore import partition, synth

pytestmark = pytest.mark.slow
DATE = dt.date(2026, 11, 24)
RAY = str(Path(sys.executable).parent / "ray")


@pytest.fixture()
def ray_head(tmp_path):
    """A head node bound to loopback with token authentication; stopped afterwards."""
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # the job's `python`
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    subprocess.run([RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--include-dashboard=true",
                    "--num-cpus=4", "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=180)
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dash}"
    yield env
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_score_job_via_ray_job_submit(ray_head, tiny_model_dir, tiny_backbone, tmp_path):
    snap = tmp_path / "snap" / f"date={DATE}"
    snap.mkdir(parents=True)
    table, _ = synth.generate(300, DATE, 5, synth.catalog_product_ids("builtin:catalog.yaml"))
    pq.write_table(table, snap / "part-0.parquet")
    out = tmp_path / "out"
    job_id = f"nightscore-test-{secrets.token_hex(4)}"
    submit = [RAY, "job", "submit", "--submission-id", job_id, "--no-wait", "--working-dir", ".",
              "--runtime-env", "deploy/runtime_env.yaml", "--",
              "python", "jobs/score.py", "--input", str(tmp_path / "snap"), "--model", tiny_model_dir,
              "--output", str(out), "--date", str(DATE), f"model.backbone={tiny_backbone}",
              "score.precision=fp32", "ray.address=auto"]
    r = subprocess.run(submit, cwd=REPO, env=ray_head, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    status, deadline = "", time.time() + 300
    while time.time() < deadline:
        status = subprocess.run([RAY, "job", "status", job_id], env=ray_head, capture_output=True,
                                text=True, timeout=60).stdout
        if any(s in status.upper() for s in ("SUCCEEDED", "FAILED", "STOPPED")):
            break
        time.sleep(3)
    logs = subprocess.run([RAY, "job", "logs", job_id], env=ray_head, capture_output=True, text=True, timeout=60).stdout
    assert "SUCCEEDED" in status.upper(), status + logs[-3000:]
    assert f"committed {out}/date={DATE}" in logs
    scores = partition.read(str(out), DATE)
    assert scores.num_rows == 300
    # a duplicate submission id is refused by the job server: a retried submission cannot score twice
    again = subprocess.run(submit, cwd=REPO, env=ray_head, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0

"""The scheduling examples in deploy/: parsed, and the two scripts actually run.

Nothing here reaches a cluster. deploy/submit_nightly.sh runs against a stand-in `ray`
executable that is Ray's real CLI (argument parsing, runtime_env loading, status printing)
with only the HTTP client replaced; the CronJob's shell runs against a stand-in `kubectl`.
"""
from __future__ import annotations

import configparser
import datetime as dt
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
WRAPPER = DEPLOY / "submit_nightly.sh"
CRON = DEPLOY / "nightscore-nightly.cron"
SERVICE = DEPLOY / "nightscore-nightly.service"
TIMER = DEPLOY / "nightscore-nightly.timer"
RUNTIME_ENV = DEPLOY / "runtime_env.yaml"
RAYJOB = DEPLOY / "rayjob-nightly.yaml"
CRONJOB = DEPLOY / "cronjob-nightly.yaml"
README = DEPLOY / "README-sections.md"
ENTRYPOINT = "python jobs/nightly.py --config jobs/configs/prod.yaml"


def cluster_image() -> str:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())["docker"]["image"]


def yesterday_local() -> str:
    return (dt.date.today() - dt.timedelta(days=1)).isoformat()


# --------------------------------------------------------------------------- crontab
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def cron_jobs(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith("#") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", s):
            continue  # blank, comment, environment assignment
        lines.append(s)
    return lines


def test_crontab_line():
    jobs = cron_jobs(CRON.read_text())
    assert len(jobs) == 1, jobs
    fields = jobs[0].split()
    times, user, command = fields[:5], fields[5], " ".join(fields[6:])
    for value, (lo, hi) in zip(times, CRON_RANGES):
        assert CRON_FIELD.match(value), value
        for n in re.findall(r"\d+", value.split("/")[0]):
            assert lo <= int(n) <= hi, (value, lo, hi)
    assert times == ["30", "2", "*", "*", "*"]  # 02:30 every day
    assert re.fullmatch(r"[a-z_][a-z0-9_-]*", user), "cron.d lines name the user"
    assert "deploy/submit_nightly.sh" in command
    assert "%" not in command, "cron turns % into a newline"


def test_crontab_sets_the_path_to_the_ray_cli():
    env = dict(
        line.split("=", 1) for line in CRON.read_text().splitlines() if re.match(r"^[A-Z_]+=", line)
    )
    assert "RAY_ADDRESS" in env
    assert any(p.endswith(".venv/bin") for p in env["PATH"].split(":"))


# --------------------------------------------------------------------------- systemd
def unit(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # systemd keys are case-sensitive
    cp.read_string(path.read_text())
    return cp


def test_systemd_service():
    svc = unit(SERVICE)
    assert {"Unit", "Service"} <= set(svc.sections())
    assert svc["Unit"]["Description"]
    s = svc["Service"]
    assert s["Type"] == "oneshot"
    assert s["ExecStart"].endswith("deploy/submit_nightly.sh")
    assert s["WorkingDirectory"] and s["User"]
    assert ".venv/bin" in s["Environment"]


def test_systemd_timer():
    timer = unit(TIMER)
    assert {"Unit", "Timer", "Install"} <= set(timer.sections())
    t = timer["Timer"]
    assert t["OnCalendar"] == "*-*-* 02:30:00"  # same time as the crontab line
    assert t["Persistent"] == "true"
    assert t["Unit"] == SERVICE.name
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_cron_and_systemd_run_the_same_installed_wrapper():
    cron_cmd = cron_jobs(CRON.read_text())[0]
    exec_start = unit(SERVICE)["Service"]["ExecStart"]
    assert exec_start in cron_cmd


# --------------------------------------------------------------------------- runtime_env
def load_runtime_env() -> dict:
    from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args

    # exactly what `ray job submit --runtime-env deploy/runtime_env.yaml --working-dir .` builds
    return parse_runtime_env_args(runtime_env=str(RUNTIME_ENV), working_dir=".")


def test_runtime_env_is_valid_for_ray():
    from ray.runtime_env import RuntimeEnv

    env = load_runtime_env()
    RuntimeEnv(**env)  # Ray's own field validation
    assert env["working_dir"] == "."
    for pattern in (".git", ".venv", "venv", "__pycache__", "*.parquet", "*.egg-info"):
        assert pattern in env["excludes"], pattern
    for folder in ("demo", "runs", "bench", "tests"):
        assert any(p.strip("/") == folder for p in env["excludes"]), folder
    for module in env.get("py_modules", []):
        assert (REPO / module / "__init__.py").is_file(), module
    # nightscore's ray.init() sets TOKENIZERS_PARALLELISM; Ray refuses a driver whose
    # ray.init() runtime_env repeats a key of the job's runtime_env
    assert "TOKENIZERS_PARALLELISM" not in env.get("env_vars", {})


def _package(path: Path, excludes: list[str], out: Path) -> list[str]:
    from ray._private.runtime_env.packaging import create_package

    # include_gitignore=False: the excludes alone must keep the upload small
    create_package(str(path), out, include_gitignore=False, excludes=excludes)
    with zipfile.ZipFile(out) as z:
        return z.namelist()


def test_working_dir_upload_stays_small_without_git_or_venvs(tmp_path):
    env = load_runtime_env()
    names = _package(REPO, env["excludes"], tmp_path / "wd.zip")
    assert (tmp_path / "wd.zip").stat().st_size < 100 * 1024 * 1024  # Ray's hard limit
    parts = {p for n in names for p in Path(n).parts}
    assert not parts & {".git", ".venv", "venv", "__pycache__", "tests", "bench"}, parts
    assert not [n for n in names if n.endswith(".parquet")]
    for needed in ("jobs/nightly.py" if (REPO / "jobs" / "nightly.py").exists() else "jobs/train.py",
                   "jobs/configs/prod.yaml", "deploy/runtime_env.yaml", "lib/nightscore/config.py"):
        assert needed in names, needed


def test_py_modules_package_carries_the_library_and_its_data(tmp_path):
    env = load_runtime_env()
    for module in env.get("py_modules", []):
        names = _package(REPO / module, env["excludes"], tmp_path / "mod.zip")
        assert "config.py" in names and "data/catalog.yaml" in names
        assert not [n for n in names if "__pycache__" in n]


# --------------------------------------------------------------------------- the wrapper script
def test_wrapper_is_valid_bash():
    assert WRAPPER.stat().st_mode & stat.S_IXUSR, "deploy/submit_nightly.sh must be executable"
    assert WRAPPER.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in WRAPPER.read_text()
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True)


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_wrapper_passes_shellcheck():
    subprocess.run(["shellcheck", str(WRAPPER)], check=True)


def run_wrapper(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("NIGHTSCORE_", "RAY_ADDRESS"))}
    e.update(env or {})
    return subprocess.run(["bash", str(WRAPPER), *args], env=e, cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=120)


def dry_run(*args: str, **env: str) -> dict[str, str]:
    r = run_wrapper(*args, env={"NIGHTSCORE_DRY_RUN": "1", **env}, cwd=Path("/"))  # any cwd
    assert r.returncode == 0, r.stderr
    return dict(line.split(": ", 1) for line in r.stdout.splitlines())


def test_dry_run_submission_id_is_deterministic_per_date():
    a = dry_run("2024-03-01")
    b = dry_run("2024-03-01")
    assert a == b
    assert a["submission_id"] == "nightscore-nightly-2024-03-01"
    submit = a["submit"]
    assert submit.startswith("ray job submit ")
    assert "--submission-id nightscore-nightly-2024-03-01" in submit
    assert "--working-dir . --runtime-env deploy/runtime_env.yaml" in submit
    assert submit.endswith(f"-- {ENTRYPOINT} --date 2024-03-01")
    assert dry_run("2024-03-02")["submission_id"] == "nightscore-nightly-2024-03-02"
    # the date can also come from the environment; the argument wins
    assert dry_run(NIGHTSCORE_DATE="2024-01-31")["date"] == "2024-01-31"
    assert dry_run("2024-02-01", NIGHTSCORE_DATE="2024-01-31")["date"] == "2024-02-01"


def test_dry_run_defaults_to_yesterday():
    before = yesterday_local()
    got = dry_run()
    assert got["date"] in (before, yesterday_local())  # in case midnight passed meanwhile
    assert got["submission_id"] == f"nightscore-nightly-{got['date']}"


def test_dry_run_uses_ray_address():
    got = dry_run("2024-03-01", RAY_ADDRESS="http://10.0.1.5:8265")
    assert "--address http://10.0.1.5:8265" in got["submit"]


@pytest.mark.parametrize("bad", ["2024-3-1", "yesterday", "2024-02-30", "2024-03-01; rm -rf /"])
def test_bad_date_is_usage_error(bad):
    r = run_wrapper(bad, env={"NIGHTSCORE_DRY_RUN": "1"})
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "submission_id" not in r.stdout


# ---- the wrapper against Ray's real job CLI with a stand-in HTTP client
FAKE_RAY = '''#!{python}
"""Ray's real `ray` CLI, with JobSubmissionClient replaced by a fake backed by a JSON file."""
import json, os, sys
from unittest import mock

STATE = os.environ["FAKE_RAY_STATE"]


def load():
    with open(STATE) as f:
        return json.load(f)


def save(s):
    with open(STATE, "w") as f:
        json.dump(s, f)


s = load()
s["calls"].append(sys.argv[1:])
save(s)

from ray.dashboard.modules.job import cli as job_cli
from ray.job_submission import JobStatus


class Info:
    def __init__(self, status, message):
        self.status, self.message = JobStatus(status), message


class Client:
    def submit_job(self, *, entrypoint, submission_id=None, runtime_env=None, **kwargs):
        s = load()
        s["submitted"].append({{"id": submission_id, "entrypoint": entrypoint, "runtime_env": runtime_env}})
        if submission_id in s["jobs"]:
            save(s)
            raise RuntimeError(
                "Request failed with status code 400: Traceback (most recent call last):\\n"
                f"ValueError: Job with submission_id {{submission_id}} already exists. "
                "Please use a different submission_id.")
        if s.get("refuse"):
            save(s)
            raise RuntimeError("Request failed with status code 500: something else")
        s["jobs"][submission_id] = {{"statuses": list(s["outcome"]), "message": s.get("message")}}
        save(s)
        return submission_id

    def get_job_info(self, job_id):
        s = load()
        job = s["jobs"][job_id]
        status = job["statuses"].pop(0) if len(job["statuses"]) > 1 else job["statuses"][0]
        save(s)
        return Info(status, job["message"] if status == "FAILED" else None)

    def get_version(self):
        return "1"

    async def tail_job_logs(self, job_id):
        yield "[nightly] scoring ...\\n"

    def get_job_logs(self, job_id):
        return "[nightly] scoring ...\\n"


with mock.patch.object(job_cli, "_get_sdk_client", lambda *a, **k: Client()):
    from ray.scripts.scripts import cli
    cli.main(args=sys.argv[1:], prog_name="ray")
'''


@pytest.fixture()
def fake_ray(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ray_bin = bin_dir / "ray"
    ray_bin.write_text(FAKE_RAY.format(python=sys.executable))
    ray_bin.chmod(0o755)
    state = tmp_path / "state.json"

    def run(*args, jobs=None, outcome=("SUCCEEDED",), message=None, refuse=False):
        if not state.exists() or jobs is not None:
            state.write_text(json.dumps({"calls": [], "submitted": [], "jobs": jobs or {},
                                         "outcome": list(outcome), "message": message, "refuse": refuse}))
        else:  # keep the jobs the cluster already has, as a real cluster would
            s = json.loads(state.read_text())
            s.update(calls=[], submitted=[], outcome=list(outcome), message=message, refuse=refuse)
            state.write_text(json.dumps(s))
        env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_RAY_STATE": str(state),
               "RAY_ADDRESS": "http://10.0.1.5:8265", "NIGHTSCORE_POLL_S": "0"}
        r = run_wrapper(*args, env=env)
        return r, json.loads(state.read_text())

    return run


def test_submits_once_and_reports_success(fake_ray):
    r, s = fake_ray("2024-03-01", outcome=["PENDING", "RUNNING", "SUCCEEDED"])
    assert r.returncode == 0, r.stderr
    assert [j["id"] for j in s["submitted"]] == ["nightscore-nightly-2024-03-01"]
    job = s["submitted"][0]
    assert job["entrypoint"] == f"{ENTRYPOINT} --date 2024-03-01"
    # the real CLI loaded deploy/runtime_env.yaml and added --working-dir
    assert job["runtime_env"]["working_dir"] == "." and ".git" in job["runtime_env"]["excludes"]
    commands = [" ".join(c[:2]) for c in s["calls"]]
    assert commands[0] == "job submit" and "job logs" in commands and commands[-1] == "job status"
    assert all("http://10.0.1.5:8265" in c for c in s["calls"])
    assert "[nightly] scoring" in r.stdout + r.stderr  # driver output streamed into the log


def test_retried_run_is_a_no_op_that_reports_the_first_outcome(fake_ray):
    r1, _ = fake_ray("2024-03-01", outcome=["SUCCEEDED"])
    assert r1.returncode == 0
    r2, s = fake_ray("2024-03-01", outcome=["SUCCEEDED"])  # cron/systemd retry, same date
    assert r2.returncode == 0, r2.stderr
    assert "not submitting again" in r2.stderr
    assert len(s["jobs"]) == 1  # still one job for that date
    assert [c[:2] for c in s["calls"]] == [["job", "submit"], ["job", "status"]]


def test_retry_while_the_first_run_is_still_going_waits_for_it(fake_ray):
    running = {"nightscore-nightly-2024-03-01": {"statuses": ["RUNNING", "RUNNING", "SUCCEEDED"], "message": None}}
    r, s = fake_ray("2024-03-01", jobs=running)
    assert r.returncode == 0, r.stderr
    assert len(s["jobs"]) == 1
    assert [c[:2] for c in s["calls"]].count(["job", "status"]) == 3


def test_retry_of_a_failed_date_reports_failure_without_rerunning(fake_ray):
    failed = {"nightscore-nightly-2024-03-01": {"statuses": ["FAILED"], "message":
              "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n..."}}
    r, s = fake_ray("2024-03-01", jobs=failed)
    assert r.returncode == 1
    assert len(s["jobs"]) == 1


@pytest.mark.parametrize("code,expected", [(1, 1), (2, 2), (3, 3), (137, 1)])
def test_job_exit_status_is_propagated(fake_ray, code, expected):
    message = (f"Job entrypoint command failed with exit code {code}, last available logs "
               "(truncated to 20,000 chars):\nexit code 0 mentioned in the logs\n")
    r, _ = fake_ray("2024-03-01", outcome=["RUNNING", "FAILED"], message=message)
    assert r.returncode == expected, r.stderr


def test_stopped_job_is_a_failure(fake_ray):
    r, _ = fake_ray("2024-03-01", outcome=["RUNNING", "STOPPED"])
    assert r.returncode == 1


def test_other_submission_errors_fail(fake_ray):
    r, s = fake_ray("2024-03-01", refuse=True)
    assert r.returncode == 1
    assert "status code 500" in r.stderr
    assert [c[:2] for c in s["calls"]] == [["job", "submit"]]


# --------------------------------------------------------------------------- KubeRay
def rayjob() -> dict:
    return yaml.safe_load(RAYJOB.read_text())


def containers(cluster_spec: dict) -> list[dict]:
    groups = [cluster_spec["headGroupSpec"], *cluster_spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_rayjob_manifest():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    assert job["kind"] == "RayJob"
    assert job["metadata"]["name"] == "nightscore-nightly"
    spec = job["spec"]
    assert spec["entrypoint"] == ENTRYPOINT
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    assert spec.get("backoffLimit", 0) == 0  # a retry would hide a monitoring alert (exit 3)
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**runtime_env)
    assert re.match(r"^(s3|gs|https)://.+\.zip$", runtime_env["working_dir"])


def test_rayjob_image_matches_cluster_yaml():
    image = cluster_image()
    spec = rayjob()["spec"]["rayClusterSpec"]
    assert {c["image"] for c in containers(spec)} == {image}
    assert spec["rayVersion"] == image.split(":")[1].split("-")[0]


def test_rayjob_cluster_fits_prod_scoring():
    from nightscore.config import load_config

    score = load_config(REPO / "jobs" / "configs" / "prod.yaml").score
    spec = rayjob()["spec"]["rayClusterSpec"]
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    gpu_groups = [g for g in spec["workerGroupSpecs"]
                  if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    assert gpu_groups
    g = gpu_groups[0]
    limits = g["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert g["replicas"] >= score.num_actors
    assert int(limits["nvidia.com/gpu"]) >= score.gpus_per_actor
    assert float(limits["cpu"]) >= score.cpus_per_actor


# ---- the CronJob that creates one RayJob per date
def cronjob_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(CRONJOB.read_text()) if d]


def test_cronjob_manifest():
    docs = cronjob_docs()
    kinds = {d["kind"]: d for d in docs}
    assert {"ServiceAccount", "Role", "RoleBinding", "CronJob"} <= set(kinds)
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    assert cron["spec"]["schedule"] == "30 2 * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    rules = kinds["Role"]["rules"]
    assert any("rayjobs" in r["resources"] and "create" in r["verbs"] for r in rules)
    assert "RayCronJob" not in kinds  # feature-gated, schema still moving: not shipped


def cronjob_script() -> str:
    cron = next(d for d in cronjob_docs() if d["kind"] == "CronJob")
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/bin/sh", "-c"]
    return container["args"][0]


FAKE_KUBECTL = textwrap.dedent('''\
    #!/bin/sh
    # stand-in kubectl: `create -f FILE` stores FILE, or fails like the API server would
    [ "$1" = create ] && [ "$2" = -f ] || { echo "unexpected: $*" >&2; exit 64; }
    name=$(sed -n 's/^  name: //p' "$3" | head -n 1)
    if [ -e "$KUBE_STORE/$name" ]; then
      echo "Error from server (AlreadyExists): error when creating \\"$3\\": rayjobs.ray.io \\"$name\\" already exists" >&2
      exit 1
    fi
    if [ -n "${KUBE_FAIL:-}" ]; then echo "error: $KUBE_FAIL" >&2; exit 1; fi
    cp "$3" "$KUBE_STORE/$name"
    echo "rayjob.ray.io/$name created"
''')


@pytest.fixture()
def run_cronjob(tmp_path):
    bin_dir, store = tmp_path / "bin", tmp_path / "store"
    bin_dir.mkdir()
    store.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    script = cronjob_script()

    def run(**env):
        e = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "TEMPLATE": str(RAYJOB), "KUBE_STORE": str(store), **env}
        r = subprocess.run(["/bin/sh", "-c", script], env=e, capture_output=True, text=True, timeout=60)
        return r, {p.name: yaml.safe_load(p.read_text()) for p in store.iterdir()}

    return run


def test_cronjob_creates_one_rayjob_per_date(run_cronjob):
    r, created = run_cronjob(NIGHTSCORE_DATE="2024-03-01")
    assert r.returncode == 0, r.stderr
    assert list(created) == ["nightscore-nightly-2024-03-01"]
    job = created["nightscore-nightly-2024-03-01"]
    assert job["metadata"]["name"] == "nightscore-nightly-2024-03-01"
    assert job["spec"]["entrypoint"] == f"{ENTRYPOINT} --date 2024-03-01"
    # everything else is the template, unchanged
    template = rayjob()
    job["metadata"]["name"] = template["metadata"]["name"]
    job["spec"]["entrypoint"] = template["spec"]["entrypoint"]
    assert job == template

    again, created = run_cronjob(NIGHTSCORE_DATE="2024-03-01")  # retried schedule
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout
    assert len(created) == 1


def test_cronjob_defaults_to_yesterday_utc(run_cronjob):
    before = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    r, created = run_cronjob()
    assert r.returncode == 0, r.stderr
    after = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1)).isoformat()
    assert set(created) <= {f"nightscore-nightly-{before}", f"nightscore-nightly-{after}"} and created


def test_cronjob_fails_on_other_errors(run_cronjob):
    r, created = run_cronjob(NIGHTSCORE_DATE="2024-03-01", KUBE_FAIL="forbidden")
    assert r.returncode == 1
    assert "forbidden" in r.stderr and not created


# --------------------------------------------------------------------------- README sections
def test_readme_sections_cover_operation_and_retraining():
    text = README.read_text()
    assert re.search(r"^## Nightly operation", text, re.M)
    assert re.search(r"^## Retraining at scale", text, re.M)
    for needed in ("_manifest.json", "date=YYYY-MM-DD", "report.html", "--force", "nightscore-nightly-",
                   "ray up cluster.yaml", "--storage s3://", "APPROVED", "metrics.json", "ZeRO-3", "bf16"):
        assert needed in text, needed

"""Losing a whole node, on a real multi-node Ray cluster on this machine.

`ray.cluster_utils.Cluster` starts a head (CPU 0 and the dashboard, as in cluster.yaml) and two
worker nodes (2 CPUs each), every node its own raylet, object store, custom resource and
nightscore cache folder (XDG_CACHE_HOME), so placement across nodes and per-node caches are
real. The real jobs run against it as drivers (RAY_ADDRESS, as `ray job submit` sets it), and a
worker node is removed while they run: its raylet and object store killed (SIGKILL), then every
process it had started, as when a spot instance is reclaimed. Nothing here calls ray.init in the
test process: the cluster is the only Ray state, and its fixture shuts it down.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from conftest import REPO
from nightscore import partition, storage
from nightscore.model import store

pytestmark = pytest.mark.slow
DATE = dt.date(2026, 11, 25)
ROWS = 3000


@contextlib.contextmanager
def environ(**values: str):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class SimCluster:
    """The head and the worker nodes; worker nodes are named worker1, worker2, ... in the order added."""

    def __init__(self, root: Path):
        from ray.cluster_utils import Cluster

        self.root, self.count, self.names = root, 0, {}
        self.lock = threading.Lock()  # the job readers map pids to nodes while tests add and remove them
        # a killed node is declared dead after ~1.5 s of failed health checks (default ~30 s)
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(
            num_cpus=0, resources={"head": 1}, include_dashboard=True,
            _system_config={"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                            "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}))

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self):
        """A fresh node: 2 CPUs, its own custom resource and an empty nightscore cache. (DeepSpeed's
        compiled ops stay in the shared torch_extensions folder, as if baked into the node image:
        building them costs each fresh node ~40 s on 2 cores.)"""
        self.count += 1
        name = f"worker{self.count}"
        cache = self.root / name / "cache"
        cache.mkdir(parents=True)
        torch_ext = os.environ.get("TORCH_EXTENSIONS_DIR") or str(
            Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions")
        with self.lock, environ(XDG_CACHE_HOME=str(cache), TORCH_EXTENSIONS_DIR=torch_ext):
            node = self.cluster.add_node(num_cpus=2, resources={name: 1})
            self.names[node] = name
        return node

    @property
    def workers(self) -> list:
        return sorted(self.cluster.worker_nodes, key=lambda n: self.names[n])

    def cache_of(self, node) -> Path:
        return self.root / self.names[node] / "cache"

    @staticmethod
    def raylet(node) -> psutil.Process:
        from ray._private import ray_constants

        return psutil.Process(node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid)

    def node_of(self, pid: int):
        """The worker node whose raylet started process `pid` (None: the head, or gone)."""
        with self.lock:
            raylets = {self.raylet(n).pid: n for n in self.workers}
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            while proc is not None:
                if proc.pid in raylets:
                    return raylets[proc.pid]
                proc = proc.parent()
        return None

    def remove(self, node) -> None:
        """The machine is gone: its raylet, object store and agents killed (SIGKILL, no draining),
        then every process it had started (the workers and actors on it)."""
        with self.lock:
            procs = self.raylet(node).children(recursive=True)
            self.cluster.remove_node(node, allow_graceful=False)
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)


@pytest.fixture(scope="module")
def sim(tmp_path_factory, s3_server):
    """Started after the S3 server, so every node's processes find it as production nodes find S3."""
    cluster = SimCluster(tmp_path_factory.mktemp("nodes"))
    try:
        cluster.add_worker()
        cluster.add_worker()
        yield cluster
    finally:
        cluster.cluster.shutdown()


@pytest.fixture()
def two_workers(sim):
    """Every test starts with two live worker nodes, replacing any an earlier test removed."""
    while len(sim.workers) < 2:
        sim.add_worker()
    return sim


@pytest.fixture(scope="module")
def s3_model(s3_server, tiny_model_dir):
    """The tiny model on S3 (moto): every node downloads its own verified copy into its cache."""
    import boto3

    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="nightscore-node-loss")
    uri = "s3://nightscore-node-loss/model"
    store.upload_dir(Path(tiny_model_dir), uri)
    return uri


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("labelled")
    subprocess.run([sys.executable, str(REPO / "jobs" / "make_snapshots.py"), "--out", str(root), "--customers",
                    "1000", "--date", str(DATE), "--seed", "3", "--labels", "--files", "2"],
                   check=True, capture_output=True)
    return str(root / f"date={DATE}")


class Job:
    """A job script run as a driver of the cluster, its output (worker lines included) read as it
    comes; `ready` maps each inference actor that said it was ready to its node's name, looked up
    while the actor lives."""

    started: list["Job"] = []  # killed after each test if still running (a failed assertion)
    READY = re.compile(r"ScoringActor\)+ pid=(\d+)\)\S*\s+\[score\] actor ready")

    def __init__(self, sim: SimCluster, cache: Path, script: str, *args: str, cwd: Path = REPO):
        self.sim, self.ready = sim, {}
        env = {**os.environ, "RAY_ADDRESS": sim.address, "RAY_DEDUP_LOGS": "0", "XDG_CACHE_HOME": str(cache),
               "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / script), *args], env=env, cwd=cwd,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        Job.started.append(self)

    def _read(self) -> None:
        for line in self.proc.stdout:
            if m := self.READY.search(line):
                self.ready[int(m.group(1))] = self.sim.names.get(self.sim.node_of(int(m.group(1))))
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        """The first output line matching `pattern`, waiting for it."""
        rx, seen, deadline = re.compile(pattern), 0, time.monotonic() + timeout
        with self.cond:
            while True:
                for line in self.lines[seen:]:
                    if m := rx.search(line):
                        return m
                seen = len(self.lines)
                if time.monotonic() > deadline or not self.reader.is_alive():
                    self.proc.kill()
                    raise AssertionError(f"no line matching {pattern!r}:\n{self.output[-6000:]}")
                self.cond.wait(1.0)

    def finish(self, timeout: float = 240) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"the job did not finish within {timeout} s:\n{self.output[-6000:]}") from None
        self.reader.join(30)
        print(self.output)  # shown by pytest when the test fails
        return rc

    @property
    def output(self) -> str:
        return "".join(self.lines)


@pytest.fixture(autouse=True)
def no_job_left_running():
    yield
    while Job.started:
        job = Job.started.pop()
        if job.proc.poll() is None:
            job.proc.kill()
            job.proc.wait(30)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_local_checkpoint_folder_some_node_cannot_see_is_refused_up_front(two_workers, labelled, tiny_backbone,
                                                                            tmp_path):
    """/proc/self/cwd/runs names a different folder in every process, as a local path names a
    different disk on every machine: the driver (run from its own folder) writes the marker in
    its folder, the nodes' processes look in theirs. The job exits 2 naming --storage before it
    reads any data; the marker is gone."""
    driver = tmp_path / "driver"
    driver.mkdir()
    job = Job(two_workers, tmp_path / "cache", "train.py", "--train", labelled, "--out", str(tmp_path / "model"),
              "--storage", "/proc/self/cwd/runs", f"model.backbone={tiny_backbone}", "model.max_length=128", cwd=driver)
    assert job.finish(120) == 2, job.output[-4000:]
    assert re.search(r"error: --storage /proc/self/cwd/runs is a local folder that (\d) of this Ray cluster's \1 "
                     r"nodes do not see .*use an s3:// URI, or a folder every node mounts", job.output), job.output[-4000:]
    assert "[train] rows" not in job.output and "Traceback" not in job.output
    assert (driver / "runs").is_dir() and not list((driver / "runs").iterdir())
    assert not (tmp_path / "model").exists()


def test_training_resumes_after_losing_a_workers_node(two_workers, labelled, tiny_backbone, tmp_path):
    """ZeRO-2 on 2 workers (packed on one node by Ray Train's default placement), 2 epochs; that
    node is removed in epoch 2, once the controller has recorded epoch 1's checkpoint in the shared
    storage. Ray Train restarts the workers from that checkpoint on the nodes left (train.max_failures
    is 1); the resume is recorded in training.json and the exported model verifies."""
    sim, runs, out = two_workers, tmp_path / "runs", tmp_path / "model"
    job = Job(sim, tmp_path / "cache", "train.py", "--train", labelled, "--out", str(out), "--storage", str(runs),
              "--name", "lost", f"model.backbone={tiny_backbone}", "model.max_length=128", "train.epochs=2",
              "train.micro_batch=32", "train.lr=1e-3", "train.patience=5")
    rank0 = int(job.wait_for(r"RayTrainWorker pid=(\d+)\)\S*\s+\[train\] epoch 1/2 ", 300).group(1))
    node = sim.node_of(rank0)
    assert node is not None, "rank 0 runs on a worker node"
    snapshot = runs / "lost" / "checkpoint_manager_snapshot.json"  # written when the controller records a checkpoint
    wait_until(snapshot.exists, 60, "epoch 1's checkpoint to be recorded")
    sim.remove(node)
    # a fresh node joins, as the autoscaler replaces a lost one: the restarted workers take the
    # remaining node's 2 CPUs, and the dataset blocks lost with the node are rebuilt on this one
    sim.add_worker()
    assert job.finish(300) == 0, job.output[-6000:]
    assert "resumed from checkpoint after epoch 1" in job.output, job.output[-6000:]

    training = json.loads((out / "training.json").read_text())
    assert training["resumed_at_epochs"] == [2]
    assert training["storage_path"] == str(runs)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [int(h["epoch"]) for h in metrics["history"]] == [1, 2]
    store.verify(out)  # every file matches the manifest's sha256
    assert store.load(str(out)).version == json.loads((out / "model.json").read_text())["version"]


def check_committed(out: Path, reports: Path, snapshot: Path) -> dict:
    """One commit: the manifest, the one run folder it names, every input row scored or quarantined
    exactly once, and the report of that same run, complete."""
    fs, root = storage.filesystem(str(out))
    record = partition.manifest(fs, root, DATE)
    assert record is not None
    runs = sorted(p.name for p in (out / f"date={DATE}").iterdir() if p.name.startswith("run="))
    assert runs == [f"run={record['run_id']}"]
    scores, quarantine = partition.read(str(out), DATE, "scores"), partition.read(str(out), DATE, "quarantine")
    assert record["input_rows"] == ROWS == record["scored_rows"] + record["quarantined_rows"]
    assert (scores.num_rows, quarantine.num_rows) == (record["scored_rows"], record["quarantined_rows"])
    scored = scores.column("customer_id").to_pylist()
    held = {i for i in quarantine.column("customer_id").to_pylist() if i}
    assert len(scored) == len(set(scored)) and not held & set(scored)
    inputs = pq.read_table(snapshot / f"date={DATE}", columns=["customer_id"]).column(0)
    assert set(pc.drop_null(inputs).to_pylist()) == set(scored) | held
    assert set(scores.column("run_id").to_pylist()) == {record["run_id"]}

    report = json.loads((reports / f"date={DATE}" / "report.json").read_text())
    assert report["run_id"] == record["run_id"] and report["scored_rows"] == record["scored_rows"]
    assert (reports / f"date={DATE}" / "report.html").read_text().rstrip().endswith("</html>")
    return record


def test_nightly_survives_losing_an_inference_node(two_workers, s3_model, tiny_backbone, tmp_path):
    """The nightly job scores with one inference actor on each worker node; the node of the first
    actor to finish a batch is removed while batches are in flight, and a fresh node joins (as the
    autoscaler replaces a reclaimed spot node). The run commits once, every row scored or
    quarantined exactly once, with the report of that run; or it fails with nothing committed
    and no report. A rerun then commits, with an actor on the fresh node, which built its own
    verified model copy in its empty cache."""
    sim = two_workers
    snap, out, reports = tmp_path / "snap", tmp_path / "scores", tmp_path / "reports"
    subprocess.run([sys.executable, str(REPO / "jobs" / "make_snapshots.py"), "--out", str(snap), "--customers",
                    str(ROWS), "--date", str(DATE), "--seed", "7", "--corrupt-fraction", "0.02", "--files", "4"],
                   check=True, capture_output=True)
    args = ["--date", str(DATE), f"nightly.snapshots={snap}", f"nightly.output={out}", f"nightly.reports={reports}",
            f"nightly.model={s3_model}", f"model.backbone={tiny_backbone}", "score.precision=fp32",
            "score.num_actors=2", "score.batch_size=64", "score.rows_per_file=64"]
    job = Job(sim, tmp_path / "cache", "nightly.py", *args)
    pid = int(job.wait_for(r"ScoringActor\)+ pid=(\d+)\)\S*\s+\[score\] model path", 240).group(1))
    lost = sim.node_of(pid)
    assert lost is not None
    sim.remove(lost)
    fresh = sim.add_worker()
    rc = job.finish()
    print(f"first run: exit {rc}")
    print("actors", job.ready, "lost", sim.names.get(lost), "fresh", sim.names[fresh])
    first_two = list(job.ready.values())[:2]
    assert len(set(first_two)) == 2 and None not in first_two, job.ready  # one actor on each worker node
    if rc in (0, 3):  # committed (3: a monitoring alert, after the commit)
        first = check_committed(out, reports, snap)
    else:
        assert rc == 1, job.output[-6000:]
        assert re.search(r"^error: .*nothing committed", job.output, re.M) and "Traceback" not in job.output
        assert not (out / f"date={DATE}" / "_manifest.json").exists() and not (reports / f"date={DATE}").exists()
        first = None

    rerun = Job(sim, tmp_path / "cache", "nightly.py", *args, *(["--force"] if first else []))
    assert rerun.finish() in (0, 3), rerun.output[-6000:]
    second = check_committed(out, reports, snap)
    assert first is None or second["run_id"] != first["run_id"]
    print("rerun actors", rerun.ready)
    assert sim.names[fresh] in rerun.ready.values()
    copies = list((sim.cache_of(fresh) / "nightscore" / "models").iterdir())
    assert len(copies) == 1
    store.verify(copies[0])

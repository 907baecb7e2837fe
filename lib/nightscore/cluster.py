"""Connecting to Ray: join the cluster a job was submitted to, or start one on this machine; and
checking that a cluster's nodes all reach the storage a run writes to."""
from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from .config import RaySpec


# Without --verbose, what the libraries print for developers stays off the console in every Ray
# process: Ray Data's per-dataset lines and its notices (one says progress bars are off, as
# asked), model loading and saving progress bars, and deprecation notices. Errors still show.
QUIET = {"RAY_DATA_LOG_LEVEL": "ERROR", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
         "PYTHONWARNINGS": "ignore::DeprecationWarning,ignore::FutureWarning"}


def quiet_driver() -> None:
    """The same for the job's own process, before or after it imported the libraries."""
    import sys
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", QUIET["HF_HUB_DISABLE_PROGRESS_BARS"])
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if "transformers" in sys.modules:  # it read the variable at import
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def init_ray(spec: RaySpec, training: bool = False) -> None:
    """`ray job submit` sets RAY_ADDRESS, so the job joins that cluster; plain `python jobs/…`
    starts a local one with `ray.num_cpus` logical CPUs (above the core count is fine: it
    leaves Ray Data room beside the training workers). For `training`, the local one runs the
    dashboard (on 127.0.0.1: Ray Train's placement-group cleaner polls the state API it serves)
    and keeps idle workers for reuse; scoring does without both."""
    import ray
    import ray.data

    if ray.is_initialized():
        return
    # Ray Train sends a worker's print() both to its logger and to the console: once is enough
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
                        **({} if spec.verbose else QUIET)}}
    level = logging.INFO if spec.verbose else logging.WARNING  # Ray's own start-up lines
    if spec.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=spec.address, runtime_env=env, log_to_driver=True, logging_level=level)
    else:
        # No Python workers prestarted (on a 2-core laptop they cost ~1.3 s of every run's
        # start-up), and no metrics export (a local Ray has no Prometheus to read it; exporting
        # halved the dashboard agent's CPU). Scoring keeps no idle worker once the read tasks are
        # done (each polled ~1 % of a core for the rest of the run); training keeps them: Ray
        # Train's data tasks recur every epoch, and a fresh worker for each (its imports again)
        # cost a 3-epoch local run of 1,500 customers on 2 cores 106 s against 86 s (RESULTS.md).
        system = {"prestart_worker_first_driver": False, "enable_metrics_collection": False}
        if not training:
            system["num_workers_soft_limit"] = 0
        ray.init(num_cpus=spec.num_cpus, runtime_env=env, include_dashboard=training, dashboard_host="127.0.0.1",
                 logging_level=level, _system_config=system)
    ctx = ray.data.DataContext.get_current()  # travels with every dataset, to the actors that run it
    ctx.enable_progress_bars = ctx.print_on_execution_start = spec.verbose
    if not spec.verbose:  # Ray Data's per-dataset lines stay in its log file (ray-data.log), off the console
        for handler in logging.getLogger("ray.data").handlers:
            if handler.name == "console":
                handler.setLevel(logging.ERROR)


def _sees(path: str, token: str) -> bool:
    """On one node: does `path` hold the marker the driver wrote (this run's token)?"""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read() == token
    except OSError:
        return False


def check_shared_storage(uri: str, key: str, timeout: float = 60.0) -> None:
    """Refuse, before any work, a local `uri` that some node of the Ray cluster does not see.

    What workers write under `uri` on one node (Ray Train's checkpoints) is read back by the
    driver, and after a lost node by workers on other nodes, so on a cluster of more than one
    node a local path must name the same folder everywhere (a shared mount). The driver writes
    a marker file holding a fresh token there, and a zero-CPU task pinned to every alive node
    reads it back. An s3:// URI is shared by nature, and a single node (a laptop) has nothing to
    check. Nodes that join later are not checked: clusters that autoscale from no workers
    should use s3://. `key` names the setting in the error, a ConfigError (jobs exit 2)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from .config import ConfigError

    scheme, _, rest = uri.partition("://")
    if rest and scheme != "file":
        return
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    folder = Path(rest or uri).expanduser().absolute()
    token = uuid.uuid4().hex
    marker = folder / f".nightscore-shared-check-{token}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        marker.write_text(token, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key} {uri}: cannot write there: {exc}") from None
    try:
        probe = ray.remote(num_cpus=0, max_retries=0)(_sees)
        refs = {node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
                .remote(str(marker), token) for node in nodes}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
        blind = []
        for node, ref in refs.items():
            try:
                if ref not in ready or not ray.get(ref):
                    blind.append(node[:8])
            except ray.exceptions.RayError:  # the node left meanwhile: nothing of this run will run there
                pass
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise ConfigError(
            f"{key} {uri} is a local folder that {len(blind)} of this Ray cluster's {len(nodes)} nodes do not see "
            f"(node ids {', '.join(blind)}: no copy of a marker file written there, or no answer in {timeout:.0f} s). "
            "What a run writes there (checkpoints) must be where every node reaches it, or a run that loses a node "
            "cannot resume: use an s3:// URI, or a folder every node mounts at the same path (NFS, EFS)")

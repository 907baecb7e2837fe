"""Connecting to Ray: join the cluster a job was submitted to, or start one on this machine."""
from __future__ import annotations

import logging
import os

from .config import RaySpec


def init_ray(spec: RaySpec, dashboard: bool = False) -> None:
    """`ray job submit` sets RAY_ADDRESS, so the job joins that cluster; plain `python jobs/…`
    starts a local one with `ray.num_cpus` logical CPUs (above the core count is fine: it
    leaves Ray Data room beside the training workers). A local one runs the dashboard (on
    127.0.0.1) only when asked: Ray Train's placement-group cleaner polls the state API it
    serves, and scoring does without its CPU."""
    import ray
    import ray.data

    if ray.is_initialized():
        return
    # Ray Train sends a worker's print() both to its logger and to the console: once is enough
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}}
    level = logging.INFO if spec.verbose else logging.WARNING  # Ray's own start-up lines
    if spec.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=spec.address, runtime_env=env, log_to_driver=True, logging_level=level)
    else:
        # No idle Python workers: none prestarted (on a 2-core laptop they cost ~1.3 s of every
        # run's start-up) and none kept once the read tasks are done (each idle one polled ~1 %
        # of a core for the rest of a scoring run). No metrics export either: a local Ray has
        # no Prometheus to read it, and exporting halved the dashboard agent's CPU.
        ray.init(num_cpus=spec.num_cpus, runtime_env=env, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 logging_level=level,
                 _system_config={"prestart_worker_first_driver": False, "num_workers_soft_limit": 0,
                                 "enable_metrics_collection": False})
    ctx = ray.data.DataContext.get_current()  # travels with every dataset, to the actors that run it
    ctx.enable_progress_bars = ctx.print_on_execution_start = spec.verbose
    if not spec.verbose:  # Ray Data's per-dataset lines stay in its log file (ray-data.log), off the console
        for handler in logging.getLogger("ray.data").handlers:
            if handler.name == "console":
                handler.setLevel(logging.ERROR)

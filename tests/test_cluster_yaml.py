"""cluster.yaml, checked offline with Ray's own cluster-launcher code and against prod.yaml.

`ray up` runs prepare_config() (merge with the provider's defaults.yaml), then
validate_config() (jsonschema against ray/autoscaler/ray-schema.json plus a few semantic
checks), then the AWS bootstrap, which needs credentials. We run the first two exactly as
`ray up` does; neither touches the network.
"""
from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import ray
import ray.autoscaler
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
PROD_CONFIG = REPO / "jobs" / "configs" / "prod.yaml"

# Published AWS instance sizes (vCPUs, NVIDIA GPUs) for the types this project uses.
INSTANCE_TYPES = {
    "m6i.2xlarge": (8, 0),
    "m6i.4xlarge": (16, 0),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g5.12xlarge": (48, 4),
    "g5.48xlarge": (192, 8),
    "p4d.24xlarge": (96, 8),
}


@pytest.fixture()
def raw() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def launcher_checks(config: dict) -> dict:
    """What `ray up` does before it talks to AWS."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_schema() -> dict:
    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def node_types(config: dict) -> dict[str, dict]:
    return config["available_node_types"]


def gpus(node: dict) -> int:
    return INSTANCE_TYPES[node["node_config"]["InstanceType"]][1]


def vcpus(node: dict) -> int:
    return INSTANCE_TYPES[node["node_config"]["InstanceType"]][0]


# --------------------------------------------------------------------------- the shipped file
def test_shipped_file_passes_the_launchers_own_validation(raw):
    jsonschema.validate(raw, ray_schema())  # as written, before defaults are merged in
    prepared = launcher_checks(raw)
    assert prepared["cluster_name"] == "nightscore"
    # every node type ends up with explicit min/max workers, as the autoscaler expects
    for name, node in node_types(prepared).items():
        assert node["min_workers"] <= node["max_workers"], name


def test_provider_auth_and_head(raw):
    assert raw["provider"]["type"] == "aws"
    assert re.fullmatch(r"[a-z]{2}-[a-z]+-\d", raw["provider"]["region"])
    assert raw["auth"]["ssh_user"] == "ubuntu"
    head = node_types(raw)[raw["head_node_type"]]
    assert head["node_config"]["InstanceType"] == "m6i.2xlarge"
    assert head["resources"] == {"CPU": 0}  # no tasks or actors on the head
    assert head.get("max_workers", 0) == 0


def test_gpu_worker_types(raw):
    workers = {n: t for n, t in node_types(raw).items() if n != raw["head_node_type"]}
    train = [t for t in workers.values() if gpus(t) >= 4]
    infer = [t for t in workers.values() if t["node_config"]["InstanceType"] == "g5.xlarge"]
    assert train and infer
    for t in workers.values():
        assert t["min_workers"] == 0, "GPU (and CPU) workers must scale to zero when idle"
        assert t["max_workers"] >= 1
    # the global cap admits every type at its maximum
    assert raw["max_workers"] >= sum(t["max_workers"] for t in workers.values())
    assert raw["idle_timeout_minutes"] > 0


def test_image_matches_the_installed_ray_and_python(raw):
    image = raw["docker"]["image"]
    repo, tag = image.split(":")
    assert repo in ("rayproject/ray", "rayproject/ray-ml")
    version, py, platform = tag.split("-", 2)
    # the launcher/job CLI and the cluster must run the same Ray and Python minor version
    assert version == ray.__version__
    assert py == f"py{sys.version_info.major}{sys.version_info.minor}"
    assert platform.startswith(("gpu", "cu"))


def test_repo_mount_install_and_start_commands(raw):
    assert raw["file_mounts"] == {"~/nightscore": "."}
    assert any("**/.git" in p for p in raw["rsync_exclude"])
    assert ".gitignore" in raw["rsync_filter"]  # keeps .venv off the nodes
    setup = " ".join(raw["setup_commands"])
    assert "pip install" in setup and "-e ~/nightscore" in setup
    assert "constraints-cpu" not in setup  # CUDA torch on the nodes
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--head" in head_start and "--dashboard-host=0.0.0.0" in head_start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head_start
    worker_start = " ".join(raw["worker_start_ray_commands"])
    assert "$RAY_HEAD_IP:6379" in worker_start and "dashboard-host" not in worker_start


def test_dashboard_port_is_open_to_the_vpc_only(raw):
    provider = raw["provider"]
    assert provider["use_internal_ips"] is True
    for rule in provider["security_group"]["IpPermissions"]:
        for r in rule.get("IpRanges", []):
            assert r["CidrIp"] != "0.0.0.0/0", rule
            assert re.match(r"^(10\.|172\.(1[6-9]|2\d|3[01])\.|192\.168\.)", r["CidrIp"]), r


def test_prod_config_fits_the_node_types(raw):
    from nightscore.config import load_config

    cfg = load_config(PROD_CONFIG)
    workers = {n: t for n, t in node_types(raw).items() if n != raw["head_node_type"]}

    # training: num_workers GPU workers with cpus_per_worker each, on the multi-GPU type
    train_type = max(workers.values(), key=gpus)
    t = cfg.train
    assert t.use_gpu
    gpu_per_node = gpus(train_type)
    nodes_needed = -(-t.num_workers // gpu_per_node)
    assert nodes_needed <= train_type["max_workers"]
    workers_per_node = min(t.num_workers, gpu_per_node)
    assert workers_per_node * t.cpus_per_worker < vcpus(train_type), "leave CPUs for Ray Data"

    # scoring: one actor per inference node
    infer_type = next(w for w in workers.values() if w["node_config"]["InstanceType"] == "g5.xlarge")
    s = cfg.score
    assert s.gpus_per_actor <= gpus(infer_type)
    assert s.cpus_per_actor <= vcpus(infer_type)
    assert s.num_actors <= infer_type["max_workers"]


# --------------------------------------------------------------------------- broken variants fail
def _without_node_config(c):
    del c["available_node_types"]["gpu_infer"]["node_config"]


def _resources_not_int(c):
    c["available_node_types"]["gpu_infer"]["resources"] = {"GPU": "one"}


def _unknown_node_type_key(c):
    c["available_node_types"]["gpu_infer"]["instance_type"] = "g5.xlarge"


def _unknown_docker_key(c):
    c["docker"]["gpu"] = True


def _commands_not_a_list(c):
    c["setup_commands"] = "pip install -e ~/nightscore"


def _negative_idle_timeout(c):
    c["idle_timeout_minutes"] = -1


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(lambda c: c.update(max_workers="many"), id="max_workers-not-an-integer"),
        pytest.param(lambda c: c.update(nodes={"head": {}}), id="unknown-top-level-key"),
        pytest.param(_without_node_config, id="node-type-without-node_config"),
        pytest.param(_resources_not_int, id="resources-not-integers"),
        pytest.param(_unknown_node_type_key, id="unknown-node-type-key"),
        pytest.param(_unknown_docker_key, id="unknown-docker-key"),
        pytest.param(_commands_not_a_list, id="commands-not-a-list"),
        pytest.param(_negative_idle_timeout, id="negative-idle-timeout"),
    ],
)
def test_schema_rejects(raw, break_it):
    broken = copy.deepcopy(raw)
    break_it(broken)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, ray_schema())
    # `ray up` refuses it too (a str where a list belongs breaks prepare_config before the
    # schema check runs, hence TypeError there)
    with pytest.raises((jsonschema.ValidationError, TypeError)):
        launcher_checks(broken)


def _head_type_not_defined(c):
    c["head_node_type"] = "ray.head.default"


def _min_workers_above_global_max(c):
    c["available_node_types"]["gpu_infer"]["min_workers"] = c["max_workers"] + 1


@pytest.mark.parametrize(
    "break_it",
    [
        pytest.param(_head_type_not_defined, id="head_node_type-not-a-node-type"),
        pytest.param(_min_workers_above_global_max, id="min_workers-above-max_workers"),
    ],
)
def test_launcher_semantic_checks_reject(raw, break_it):
    broken = copy.deepcopy(raw)
    break_it(broken)
    with pytest.raises(ValueError):
        launcher_checks(broken)

"""The shipped job configs (jobs/configs/*.yaml) load, and prod agrees with local."""
from __future__ import annotations

from pathlib import Path

import pytest

from nightscore.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "jobs" / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml")) + sorted(CONFIGS.glob("*.yml"))


def test_the_expected_configs_ship():
    names = {p.name for p in SHIPPED}
    assert {"local.yaml", "prod.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert cfg.schema.features
    assert len(cfg.digest()) == 64


def test_prod_describes_the_same_data_as_local():
    """A model trained in local mode must score in production and vice versa."""
    local = load_config(CONFIGS / "local.yaml").to_dict()
    prod = load_config(CONFIGS / "prod.yaml").to_dict()
    for section in ("schema", "products", "monitoring"):
        assert prod[section] == local[section], f"prod.yaml's {section} differs from local.yaml's"


def test_prod_is_the_gpu_cluster_setup():
    cfg = load_config(CONFIGS / "prod.yaml")
    t, s = cfg.train, cfg.score
    assert (t.num_workers, t.use_gpu, t.cpus_per_worker) == (8, True, 8)
    assert (t.zero_stage, t.precision, t.micro_batch, t.grad_accum, t.epochs) == (3, "bf16", 32, 2, 5)
    assert (s.num_actors, s.gpus_per_actor, s.cpus_per_actor, s.batch_size, s.precision) == (4, 1, 4, 1024, "bf16")
    assert cfg.ray.address == "auto"
    assert cfg.storage.s3.region == "eu-west-2"
    assert cfg.model.backbone.startswith("s3://")

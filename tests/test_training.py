"""End to end: Ray Train + DeepSpeed on 2 CPU workers with a tiny BERT (ZeRO-2 with a fault, ZeRO-3 in bf16,
LoRA under ZeRO-3 in fp32)."""
import datetime as dt
import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from conftest import LOCAL_CONFIG
from nightscore import synth
from nightscore.config import ConfigError, load_config
from nightscore.drills import ENV as FAULT_DRILL
from nightscore.metrics import auc
from nightscore.model import store
from nightscore.scoring.inference import Predictor
from nightscore.scoring.prepare import model_input
from nightscore.training.data import VALID, roles
from nightscore.training.trainer import train
from nightscore.validate import conform, split
from test_model_privacy import assert_no_customer_rows

pytestmark = pytest.mark.slow
DATE = dt.date(2026, 11, 23)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    table, _ = synth.generate(1200, DATE, 11, synth.catalog_product_ids("builtin:catalog.yaml"), labels=True)
    table = synth.corrupt(table, load_config(LOCAL_CONFIG).schema, 0.02, seed=3)
    part = root / f"date={DATE}"
    part.mkdir()
    pq.write_table(table.slice(0, 600), part / "part-0.parquet")
    pq.write_table(table.slice(600), part / "part-1.parquet")
    return str(part)


def cfg_for(tiny_backbone, *extra):
    return load_config(LOCAL_CONFIG, [f"model.backbone={tiny_backbone}", "model.max_length=128", "train.epochs=2",
                                      "train.micro_batch=32", "train.lr=1e-3", "score.precision=fp32", *extra])


def validation_auc(model_uri: str, data: str, cfg) -> float:
    """AUC of the exported model on the validation split the workers evaluated on."""
    loaded = store.load(model_uri)
    table = pq.read_table(data)
    valid = split(conform(table, cfg.schema, "t", with_labels=True), cfg.schema).valid
    t = cfg.train
    valid = valid.filter(roles(valid.column("customer_id"), t.valid_fraction, t.calibration_fraction) == VALID)
    valid = valid.filter(pc.is_valid(valid.column("default_12m")))
    pd = Predictor(loaded, precision="fp32").predict(model_input(valid, loaded.config, str(loaded.root))[0]).pd
    return auc(valid.column("default_12m").to_numpy(zero_copy_only=False).astype(bool), pd)


def check_model_dir(out, cfg, data):
    files = {p.name for p in out.rglob("*") if p.is_file()}
    assert {"manifest.json", "model.safetensors", "heads.safetensors", "config.yaml", "catalog.yaml",
            "metrics.json", "training.json", "model.json", "reference.json", "encoders.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]
    metrics = json.loads((out / "metrics.json").read_text())
    best = metrics["best"]
    assert 0.0 <= best["default_auc"] <= 1.0 and "ndcg@5" in best and 0.0 <= best["product_auc"] <= 1.0
    assert best["train_samples_per_s"] > 0 and best["steady_samples_per_s"] > 0
    assert 0.0 <= best["data_wait_fraction"] < 1.0
    assert all(h["model_memory_mib"] > 0 for h in metrics["history"])  # per-worker peak above pre-build RSS
    if cfg.train.precision == "fp32":
        # the exported (consolidated) weights reproduce what the workers measured in memory (in
        # bf16 the order of a sum moves a barely trained model's near-tied scores past each other)
        assert validation_auc(str(out), data, cfg) == pytest.approx(best["default_auc"], abs=2e-3)
    return metrics


def test_zero2_resumes_after_a_worker_failure_and_holds_no_customer_rows(ray_local, labelled, tiny_backbone, tmp_path,
                                                                         monkeypatch):
    monkeypatch.setenv(FAULT_DRILL, "fail_at_epoch=2")
    cfg = cfg_for(tiny_backbone, "train.zero_stage=2", "train.patience=5")
    out = tmp_path / "model"
    summary = train(cfg, labelled, None, str(out), storage_path=str(tmp_path / "runs"), run_name="z2")
    assert summary["resumed_at_epochs"] == [2]  # a worker died in epoch 2; epoch 1's checkpoint was restored
    assert summary["quarantined_rows"] > 0
    metrics = check_model_dir(out, cfg, labelled)
    assert sorted({int(h["epoch"]) for h in metrics["history"]}) == [1, 2]
    training = json.loads((out / "training.json").read_text())
    assert training["train_rows"] + training["valid_rows"] + training["calibration_rows"] + \
        training["quarantined_rows"] == 1200
    # the model directory carries aggregates only, checkpoints restored and all
    assert_no_customer_rows(out, pq.read_table(labelled), cfg.monitoring.min_group_size)
    reference = json.loads((out / store.REFERENCE_FILE).read_text())
    assert 0 < reference["rows"] <= training["calibration_rows"] + training["valid_rows"]
    assert set(reference["features"]) == {f.name for f in cfg.schema.features
                                          if f.kind in ("numeric", "categorical", "boolean")}


def check_consolidated(out, runs, backbone: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A ZeRO-3 export: epochs checkpoint only the ranks' shards, and the driver consolidated the
    best one once, after fit(); the word embeddings (frozen: train.freeze_word_embeddings) are the
    pretrained matrix as loaded, stitched from both ranks' parts. Returns the exported backbone."""
    assert not list(runs.rglob("*.safetensors"))
    loaded = store.load(str(out))
    emb = loaded.model.backbone.get_input_embeddings().weight.detach()
    assert emb.shape[0] > 1000 and float(emb.abs().sum()) > 0  # not the empty ZeRO-3 placeholder
    base = load_file(f"{backbone}/model.safetensors")
    assert torch.equal(emb, base["embeddings.word_embeddings.weight"].to(dtype).float())
    if dtype == torch.bfloat16:
        for name, weight in loaded.model.named_parameters():  # (bin edges are buffers, fixed in fp32)
            assert torch.equal(weight, weight.bfloat16().float()), name  # the engine's bf16 weights, gathered
    return loaded.model.backbone.state_dict()


def test_zero3_bf16_exports_consolidated_weights(ray_local, labelled, tiny_backbone, tmp_path):
    """The production config's ZeRO-3 + bf16: the heads, built outside ZeRO-Init, train in the
    backbone partitions' dtype (else deepspeed.initialize fails on a mixed-dtype flat buffer)."""
    cfg = cfg_for(tiny_backbone, "train.zero_stage=3", "train.precision=bf16", "train.epochs=1")
    out = tmp_path / "model"
    train(cfg, labelled, None, str(out), storage_path=str(tmp_path / "runs"), run_name="z3-bf16")
    check_model_dir(out, cfg, labelled)
    exported = check_consolidated(out, tmp_path / "runs", tiny_backbone, torch.bfloat16)
    layer = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(exported[layer], load_file(f"{tiny_backbone}/model.safetensors")[layer])  # trained


def test_lora_under_zero3_merges_into_plain_model(ray_local, labelled, tiny_backbone, tmp_path):
    """LoRA adapters trained under ZeRO-3 in fp32: the driver stitches the ranks' shards and merges
    the adapters into a plain backbone, which reproduces the workers' validation AUC."""
    cfg = cfg_for(tiny_backbone, "train.zero_stage=3", "train.finetune=lora", "train.epochs=1",
                  "train.lora.target_modules=[query, value]", "train.lr=5e-3")
    out = tmp_path / "model"
    train(cfg, labelled, None, str(out), storage_path=str(tmp_path / "runs"), run_name="lora")
    check_model_dir(out, cfg, labelled)
    merged = check_consolidated(out, tmp_path / "runs", tiny_backbone, torch.float32)
    assert not any("lora" in k for k in merged)
    base = load_file(f"{tiny_backbone}/model.safetensors")
    layer = "encoder.layer.0.attention.self"
    assert not torch.equal(merged[f"{layer}.query.weight"], base[f"{layer}.query.weight"])  # adapter merged in
    assert torch.equal(merged[f"{layer}.key.weight"], base[f"{layer}.key.weight"])  # untouched: frozen, no adapter


def test_config_must_match_labels(tiny_backbone, labelled, tmp_path):
    cfg = cfg_for(tiny_backbone, "schema.labels.default=null", "train.early_stopping_metric=default_auc")
    with pytest.raises(ConfigError, match="train.early_stopping_metric"):
        train(cfg, labelled, None, str(tmp_path / "m"), storage_path=str(tmp_path / "runs"))


def test_a_run_folder_other_users_can_write_is_refused_before_training(ray_local, tiny_backbone, labelled, tmp_path):
    """Resume and export read the run's DeepSpeed checkpoints back (pickles): never from a folder
    another user could have written them into."""
    run = tmp_path / "runs" / "shared"
    run.mkdir(parents=True)
    run.chmod(0o777)
    with pytest.raises(store.ModelError, match=f"{run} can be written by other users.*training checkpoints"):
        train(cfg_for(tiny_backbone), labelled, None, str(tmp_path / "m"), storage_path=str(tmp_path / "runs"),
              run_name="shared")
    assert not (tmp_path / "m").exists()


def test_a_120_column_table_trains_and_scores_end_to_end(ray_local, tiny_backbone, tmp_path):
    """Any table width: 119 structured columns enter as one token each, the text after them,
    through configuration alone; the model scores the same table and commits."""
    from conftest import wide_config, wide_table
    from nightscore.scoring.pipeline import run

    table, feats = wide_table(600, 3)
    part = tmp_path / "data" / f"date={DATE}"
    part.mkdir(parents=True)
    pq.write_table(table, part / "part-0.parquet")
    cfg = wide_config(tiny_backbone, feats, "train.epochs=1", "train.micro_batch=32", "score.precision=fp32",
                      "score.num_actors=1", "ray.num_cpus=4")
    summary = train(cfg, str(part), None, str(tmp_path / "model"), storage_path=str(tmp_path / "runs"), run_name="wide")
    assert summary["train_rows"] + summary["valid_rows"] + summary["quarantined_rows"] <= 600
    loaded = store.load(str(tmp_path / "model"))
    assert len(loaded.encoders.structured) == 119 and [t.name for t in loaded.encoders.text] == ["f119"]
    manifest = run(cfg, str(tmp_path / "data"), str(tmp_path / "model"), str(tmp_path / "scores"), DATE)
    assert manifest["input_rows"] == 600 == manifest["scored_rows"] + manifest["quarantined_rows"]
    assert manifest["scored_rows"] == 600

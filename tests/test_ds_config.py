from conftest import LOCAL_CONFIG
from nightscore.config import load_config
from nightscore.training.ds_config import deepspeed_config


def ds(*overrides: str, world: int = 2) -> dict:
    return deepspeed_config(load_config(LOCAL_CONFIG, list(overrides)).train, world)


def test_batch_sizes_add_up():
    c = ds("train.micro_batch=8", "train.grad_accum=3", world=4)
    assert (c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"], c["train_batch_size"]) == (8, 3, 96)


def test_cpu_uses_all_reduce_and_no_overlap_gpu_uses_reduce_scatter_and_overlap():
    cpu = ds("train.zero_stage=2")["zero_optimization"]
    gpu = ds("train.zero_stage=2", "train.use_gpu=true")["zero_optimization"]
    assert (cpu["reduce_scatter"], cpu["overlap_comm"]) == (False, False)
    assert (gpu["reduce_scatter"], gpu["overlap_comm"]) == (True, True)


def test_stage3_never_gathers_the_whole_model_and_offloads_when_asked():
    """The export stitches the saved shards (loop.consolidated_state_dict): no 16-bit gather on save."""
    z = ds("train.zero_stage=3", "train.offload_params=true", "train.offload_optimizer=true")["zero_optimization"]
    assert z["stage"] == 3 and not z.get("stage3_gather_16bit_weights_on_model_save")
    assert z["offload_param"]["device"] == "cpu" and z["offload_optimizer"]["device"] == "cpu"
    assert "offload_param" not in ds("train.zero_stage=2", "train.offload_params=true")["zero_optimization"]


def test_precision_switches():
    assert ds("train.precision=bf16")["bf16"]["enabled"] and not ds("train.precision=bf16")["fp16"]["enabled"]
    assert ds("train.precision=fp16")["fp16"]["enabled"]
    fp32 = ds("train.precision=fp32")
    assert not fp32["bf16"]["enabled"] and not fp32["fp16"]["enabled"]

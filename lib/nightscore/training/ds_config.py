"""Our TrainSpec -> a DeepSpeed config dict (ZeRO stage, precision, batching, offload)."""
from __future__ import annotations

from typing import Any

from ..config import TrainSpec


def deepspeed_config(t: TrainSpec, world_size: int) -> dict[str, Any]:
    zero: dict[str, Any] = {
        "stage": t.zero_stage,
        "contiguous_gradients": True,
        "overlap_comm": t.use_gpu,  # overlapping needs a separate comm stream; on CPU it only adds copies
        # NCCL's reduce-scatter is the fast path on GPUs; over gloo one all-reduce per bucket beats a
        # reduce to each rank
        "reduce_scatter": t.use_gpu,
        "reduce_bucket_size": t.bucket_size,
    }
    if t.zero_stage in (1, 2):
        zero["allgather_bucket_size"] = t.bucket_size
    if t.zero_stage == 3:
        zero["stage3_prefetch_bucket_size"] = t.bucket_size
        # gathered parameters stay live up to bucket_size elements: DeepSpeed's default (1e9) keeps
        # every layer a step will reuse, so a BERT-base worker held the whole model from forward to
        # backward; and the optimizer steps through the partition bucket_size elements at a time
        # (torch's CPU AdamW allocates temporaries the size of the tensor it updates)
        zero["stage3_max_live_parameters"] = t.bucket_size
        zero["stage3_max_reuse_distance"] = t.bucket_size
        zero["sub_group_size"] = t.bucket_size
        zero["stage3_param_persistence_threshold"] = 10_000
        if t.offload_params:
            zero["offload_param"] = {"device": "cpu", "pin_memory": t.use_gpu}
    if t.offload_optimizer and t.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": t.use_gpu}
    return {
        "train_micro_batch_size_per_gpu": t.micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.micro_batch * t.grad_accum * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "bf16": {"enabled": t.precision == "bf16"},
        "fp16": {"enabled": t.precision == "fp16", "initial_scale_power": 12},
        # we pass torch AdamW (works on CPU and GPU without DeepSpeed's compiled optimizers)
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }

"""What reason codes cost: the in-process predictor's rows/s on the same rows without them,
and with them for every row, the gradient pass through plain (eager) attention, the CPU
default, or through the model's own (SDPA, PyTorch's fused kernel). The model runs eagerly,
as a run below the compile threshold scores; the variants are interleaved.

    python bench/bench_reasons.py --model MODEL_DIR [--rows 256] [--threads 1] [--repeats 3]
"""
import argparse
import time
from statistics import median

import torch

from bench_score import CONFIG, DATE
from nightscore import synth
from nightscore.config import load_config
from nightscore.model import store
from nightscore.scoring.inference import Predictor
from nightscore.scoring.prepare import model_input


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = load_config(CONFIG)
    loaded = store.load(args.model)
    mcfg = loaded.config
    table, _ = synth.generate(args.rows, DATE, 11, synth.catalog_product_ids(cfg.products.catalog))
    inputs, _ = model_input(table, mcfg, str(loaded.root))
    predictor = Predictor(loaded, precision=cfg.score.precision, micro_batch=cfg.score.micro_batch,
                          threads=args.threads)
    own = loaded.model.backbone.config._attn_implementation
    variants = {  # name: (reason codes for every row, the gradient pass's attention)
        "no reason codes": (False, predictor.grad_attention),
        f"reason codes, gradient pass with {predictor.grad_attention} attention (default)": (True, predictor.grad_attention),
        f"reason codes, gradient pass with the model's {own} attention": (True, None),
    }
    predictor.predict(inputs.slice(0, 64), explain=lambda pd: pd >= 0)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (explain, grad_attention) in variants.items():
            predictor.grad_attention = grad_attention
            t0 = time.perf_counter()
            predictor.predict(inputs, explain=(lambda pd: pd >= 0) if explain else None)
            rates[name].append(args.rows / (time.perf_counter() - t0))
    print(f"{args.rows} rows, {args.threads} thread(s), {predictor.dtype or torch.float32}, "
          f"torch {torch.__version__}, median of {args.repeats} interleaved passes:")
    base = median(rates["no reason codes"])
    for name, got in rates.items():
        print(f"  {name:60s} {median(got):7.1f} rows/s  ({median(got) / base:.2f} x no reason codes)")


if __name__ == "__main__":
    main()

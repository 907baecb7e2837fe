"""Scoring on one GPU: the scoring job's pipeline with a GPU inference actor against the same
model's raw in-process rows/s on the same GPU and rows, and the model FLOP utilisation against
the GPU's measured bf16 GEMM peak. Run by bench/gpu_check.sh on a machine with an NVIDIA GPU.

    python bench/bench_gpu.py --model MODEL_DIR --rows 200000 [--json FILE] [key.path=value ...]

As in bench_score.py, raw is measured on half the rows just before the end-to-end run and on
the other half just after it; raw includes encoding the rows (model_input, text tokenisation
included; in this process, on all cores).
"""
import argparse
import datetime as dt
import tempfile
import time
from pathlib import Path

import torch

from bench_score import CONFIG, e2e, merged, raw_figures, raw_half, report, snapshot
from nightscore.config import load_config
from nightscore.model import store
from nightscore.scoring.inference import Predictor


def gpu_gemm_peak(n: int = 8192, seconds: float = 3.0) -> float:
    """Sustained bf16 FLOP/s of back-to-back n×n matmuls on the GPU (after a warm-up)."""
    a, b = (torch.randn(n, n, dtype=torch.bfloat16, device="cuda") for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    calls, t0 = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
        calls += 10
    return calls * 2 * n**3 / (time.perf_counter() - t0)


def figures(half: dict[str, float], model, peak: float, when: str) -> dict[str, float]:
    """bench_score's raw figures with the GPU's one (bf16) peak."""
    figs = raw_figures(half, model, peak, peak, when)
    del figs[f"mfu_vs_fp32_peak_{when}"]
    return figs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--json", help="write the results here as they come")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU")
    cfg = load_config(CONFIG, ["scorecard.reason_codes=false", *args.overrides])
    out: dict[str, object] = {}

    def note(**values) -> None:
        report(out, args.json, **values)

    note(rows=args.rows, gpu=torch.cuda.get_device_name(), torch=torch.__version__,
         layout=f"{cfg.score.num_actors} actor(s) x {cfg.score.gpus_per_actor:g} GPU x {cfg.score.cpus_per_actor:g} CPU",
         batch_size=cfg.score.batch_size, micro_batch=cfg.score.micro_batch,
         started=dt.datetime.now().isoformat(timespec="seconds"))
    peak = gpu_gemm_peak()
    note(gemm_peak_bf16_tflops=peak / 1e12)
    with tempfile.TemporaryDirectory() as tmp:
        table = snapshot(Path(tmp) / "n", args.rows, 1, cfg)
        loaded = store.load(args.model)
        predictor = Predictor(loaded, device="cuda", precision=cfg.score.precision,
                              micro_batch=cfg.score.micro_batch, compile=False)
        raw_half(predictor, table.slice(0, 2048))  # warm-up, precision
        note(precision="bf16" if predictor.dtype is torch.bfloat16 else "fp32")
        halves = [raw_half(predictor, table.slice(0, args.rows // 2))]
        note(**figures(halves[0], loaded.model, peak, "before"))
        rate, rss, _, record = e2e(cfg, f"{tmp}/n", args.model, f"{tmp}/out", args.rows)
        note(e2e_rows_per_s=rate, e2e_peak_rss_mb=rss, phase_seconds=record["phase_seconds"])
        halves.append(raw_half(predictor, table.slice(args.rows // 2)))
        note(**figures(halves[1], loaded.model, peak, "after"))
        both = merged(halves)
        overall = figures(both, loaded.model, peak, "all")
        raw = overall["raw_all_rows_per_s"]
        note(**overall, raw_rows_per_s=raw,
             raw_model_only_rows_per_s=both["rows"] / both["model_s"], e2e_vs_raw=rate / raw,
             finished=dt.datetime.now().isoformat(timespec="seconds"))


if __name__ == "__main__":
    main()

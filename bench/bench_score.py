"""Scoring throughput: end-to-end Ray Data pipeline vs the same model's raw in-process rows/s on the
same texts; model FLOP utilisation against this machine's measured GEMM peak; peak RSS at N and 4N.

    python bench/bench_score.py --model MODEL_DIR --rows 400 [key.path=value ...]
"""
import argparse
import datetime as dt
import json
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import torch

from nightscore import synth
from nightscore.config import load_config
from nightscore.model import store
from nightscore.model.tokens import tokenize
from nightscore.scoring.inference import Predictor
from nightscore.scoring.pipeline import run
from nightscore.serialize import serialize

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "local.yaml"
DATE = dt.date(2026, 11, 2)


def gemm_peak(dtype: torch.dtype, threads: int, n: int = 1024) -> float:
    """Best-of-5 FLOP/s of an n×n matmul: the machine's practical peak for this dtype."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def model_flops_per_token(model, seq: float) -> float:
    """2 × non-embedding parameters + attention (4 × layers × hidden × seq) per token, forward only."""
    cfg = model.backbone.config
    params = sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
    return 2 * params + 4 * cfg.num_hidden_layers * cfg.hidden_size * seq


class PeakRSS:
    """Peak summed RSS of this process and all its descendants (the Ray workers), sampled every 0.2 s."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()

    def _run(self):
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me, *me.children(recursive=True)]:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def snapshot(root: Path, n: int, seed: int, cfg):
    table, _ = synth.generate(n, DATE, seed, synth.catalog_product_ids(cfg.products.catalog))
    part = root / f"date={DATE}"
    part.mkdir(parents=True)
    for i in range(2):
        pq.write_table(table.slice(i * n // 2, n // 2 + (n % 2) * i), part / f"part-{i}.parquet")
    return table


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=400)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(CONFIG, args.overrides)
    loaded = store.load(args.model)
    mcfg = loaded.config
    out: dict[str, object] = {"rows": args.rows, "cpu_threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        table = snapshot(Path(tmp) / "n", args.rows, 1, cfg)
        ids = tokenize(serialize(table, mcfg.schema, mcfg.serialize), loaded.tokenizer, mcfg.model.max_length)
        seq = sum(len(x) for x in ids.to_pylist()) / len(ids)
        predictor = Predictor(loaded, precision=cfg.score.precision, micro_batch=cfg.score.micro_batch, threads=2)
        predictor.predict(ids.slice(0, 32))  # warm-up and precision choice, not timed
        t0 = time.perf_counter()
        predictor.predict(ids)
        raw = args.rows / (time.perf_counter() - t0)
        out.update(raw_rows_per_s=raw, mean_tokens=seq, precision=str(predictor.dtype or "fp32"))
        peak32, peak16 = gemm_peak(torch.float32, 2), gemm_peak(torch.bfloat16, 2)
        achieved = raw * seq * model_flops_per_token(loaded.model, seq)
        out.update(gemm_peak_fp32_gflops=peak32 / 1e9, gemm_peak_bf16_gflops=peak16 / 1e9,
                   model_gflops=achieved / 1e9, mfu_vs_fp32_peak=achieved / peak32,
                   mfu_vs_bf16_peak=achieved / peak16)

        for label, extra in (("e2e_no_reasons", ["scorecard.reason_codes=false"]), ("e2e_with_reasons", [])):
            c = load_config(CONFIG, [*args.overrides, *extra])
            t0 = time.perf_counter()
            with PeakRSS() as mem:
                record = run(c, f"{tmp}/n", args.model, f"{tmp}/out-{label}", DATE)
            out[f"{label}_rows_per_s"] = args.rows / (time.perf_counter() - t0)
            out[f"{label}_peak_rss_mb"] = mem.peak / 2**20
            assert record["scored_rows"] == args.rows
        snapshot(Path(tmp) / "n4", 4 * args.rows, 2, cfg)
        c = load_config(CONFIG, [*args.overrides, "scorecard.reason_codes=false"])
        with PeakRSS() as mem:
            run(c, f"{tmp}/n4", args.model, f"{tmp}/out-4n", DATE)
        out["e2e_no_reasons_4n_peak_rss_mb"] = mem.peak / 2**20
    out["e2e_vs_raw"] = out["e2e_no_reasons_rows_per_s"] / raw
    out["rss_4n_over_n"] = out["e2e_no_reasons_4n_peak_rss_mb"] / out["e2e_no_reasons_peak_rss_mb"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

"""Scoring throughput: end-to-end Ray Data pipeline vs the same model's raw in-process rows/s on the
same texts; model FLOP utilisation against this machine's measured GEMM peak; peak RSS at N and 4N.

    python bench/bench_score.py --model MODEL_DIR --rows 200000 [--sample-rows 4000] [--rss-rows 1000] [--spark]
                                [key.path=value ...]

The headline is the configured layout's end-to-end rate on all N rows; with --spark, Spark
scores the same N rows right after it (both pay their own start-up, so both are compared at
the same size). Raw in-process and the actor layouts run on a random sample of S of those
rows (their per-row rates do not depend on N). Each result is printed as a `[bench]` line
when measured, and all of them as JSON at the end.
"""
import argparse
import datetime as dt
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
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


def gemm_peak(dtype: torch.dtype, threads: int, n: int = 1024, seconds: float = 4.0) -> float:
    """Sustained FLOP/s of back-to-back n×n matmuls over a few seconds: the rate this machine
    keeps up, as the model must. (A best-of-5 burst of one matmul ran ~25 % above it on a
    shared VM, and varied by as much between runs.)"""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    calls, t0 = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - t0 < seconds:
        a @ b
        calls += 1
    return calls * 2 * n**3 / (time.perf_counter() - t0)


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


def snapshot(root: Path, n: int, seed: int, cfg) -> pa.Table:
    table, _ = synth.generate(n, DATE, seed, synth.catalog_product_ids(cfg.products.catalog))
    write_partition(root, table)
    return table


def write_partition(root: Path, table: pa.Table, files: int = 2) -> None:
    part = root / f"date={DATE}"
    part.mkdir(parents=True)
    n = table.num_rows
    for i in range(files):
        start = i * n // files
        pq.write_table(table.slice(start, (i + 1) * n // files - start), part / f"part-{i}.parquet")


def spark_rows_per_s(snapshot_dir: str, model_dir: str, cfg, rows: int, cores: int, out_dir: str) -> float:
    """The peer: Spark local mode, the same model in a pandas_udf (loaded once per task), the same
    library code for text and inference, one task per core with one torch thread each."""
    import os
    import sys
    from typing import Iterator

    import pandas as pd
    import pyarrow as pa
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import DoubleType

    from nightscore.schema import model_features

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    feats = [f.name for f in model_features(cfg.schema)]
    micro_batch = cfg.score.micro_batch

    @pandas_udf(DoubleType())
    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        loaded = store.load(model_dir)
        mcfg = loaded.config
        predictor = Predictor(loaded, precision="fp32", micro_batch=micro_batch, threads=1)
        for frame in batches:
            table = pa.Table.from_pandas(frame, preserve_index=False)
            ids = tokenize(serialize(table, mcfg.schema, mcfg.serialize), loaded.tokenizer, mcfg.model.max_length)
            yield pd.Series(predictor.predict(ids).pd)

    t0 = time.perf_counter()
    spark = (SparkSession.builder.master(f"local[{cores}]").appName("nightscore-bench")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").config("spark.driver.memory", "4g")
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(cfg.score.batch_size))
             .getOrCreate())
    df = spark.read.parquet(snapshot_dir).repartition(cores)
    df.select(cfg.schema.id, score(F.struct(*feats)).alias("pd_12m")).write.mode("overwrite").parquet(out_dir)
    elapsed = time.perf_counter() - t0
    written = spark.read.parquet(out_dir).count()
    spark.stop()
    assert written == rows, (written, rows)
    return rows / elapsed


def e2e(cfg, snapshot_dir: str, model: str, out_dir: str, rows: int) -> tuple[float, float]:
    """(rows/s, peak RSS MB) of the scoring job's pipeline, Ray start-up included; prints
    where the run's time went (the manifest's phase_seconds)."""
    import ray

    ray.shutdown()  # every run pays its own Ray start, as a nightly job does
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        record = run(cfg, snapshot_dir, model, out_dir, DATE)
    assert record["scored_rows"] == rows, record
    elapsed = time.perf_counter() - t0
    print(f"[bench] {rows} rows, {cfg.score.num_actors} actor(s) x {cfg.score.cpus_per_actor} CPU: {elapsed:.1f} s, "
          f"phases {record['phase_seconds']}", flush=True)
    return rows / elapsed, mem.peak / 2**20


def report(out: dict, **values) -> None:
    """Record results and print them at once: a long run shows its numbers as they come."""
    out.update(values)
    for k, v in values.items():
        print(f"[bench] {k} = {v:.4g}" if isinstance(v, float) else f"[bench] {k} = {v}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=400, help="N: rows for the headline end-to-end run")
    p.add_argument("--sample-rows", type=int, default=4000,
                   help="S: rows (a random sample of the N) for raw and the actor layouts")
    p.add_argument("--rss-rows", type=int, default=0, help="M: peak RSS at M and 4M rows (default S / 4)")
    p.add_argument("--spark", action="store_true", help="also time Spark local mode on the N rows (pip install pyspark)")
    p.add_argument("--with-reasons", action="store_true", help="also time end-to-end on S rows with reason codes on")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    s_rows = min(args.sample_rows, args.rows)
    m = args.rss_rows or max(100, s_rows // 4)

    def config(*extra: str, reasons: bool = False):
        return load_config(CONFIG, [*([] if reasons else ["scorecard.reason_codes=false"]), *args.overrides, *extra])

    cfg = config()
    loaded = store.load(args.model)
    mcfg = loaded.config
    out: dict[str, object] = {}
    report(out, rows=args.rows, sample_rows=s_rows, cpu_threads=torch.get_num_threads(),
           configured_layout=f"{cfg.score.num_actors} actor(s) x {cfg.score.cpus_per_actor} CPU")
    with tempfile.TemporaryDirectory() as tmp:
        table = snapshot(Path(tmp) / "n", args.rows, 1, cfg)
        pick = np.sort(np.random.default_rng(0).choice(args.rows, s_rows, replace=False))
        sample_table = table.take(pick)
        write_partition(Path(tmp) / "s", sample_table)
        sample = f"{tmp}/s"
        ids = tokenize(serialize(sample_table, mcfg.schema, mcfg.serialize), loaded.tokenizer, mcfg.model.max_length)
        seq = sum(len(x) for x in ids.to_pylist()) / len(ids)
        predictor = Predictor(loaded, precision=cfg.score.precision, micro_batch=cfg.score.micro_batch, threads=2)
        predictor.predict(ids.slice(0, 32))  # warm-up and precision choice, not timed

        def raw_rate() -> float:
            t0 = time.perf_counter()
            predictor.predict(ids)
            return s_rows / (time.perf_counter() - t0)

        raw = raw_rate()
        report(out, raw_rows_per_s=raw, mean_tokens=seq, precision=str(predictor.dtype or "fp32"))
        peak32, peak16 = gemm_peak(torch.float32, 2), gemm_peak(torch.bfloat16, 2)
        achieved = raw * seq * model_flops_per_token(loaded.model, seq)
        report(out, gemm_peak_fp32_gflops=peak32 / 1e9, gemm_peak_bf16_gflops=peak16 / 1e9,
               model_gflops=achieved / 1e9, mfu_vs_fp32_peak=achieved / peak32, mfu_vs_bf16_peak=achieved / peak16)

        # the headline first: on a small machine it is hours, the rest minutes
        rate, rss = e2e(cfg, f"{tmp}/n", args.model, f"{tmp}/out", args.rows)
        report(out, e2e_rows_per_s=rate, e2e_peak_rss_mb=rss)
        if args.spark:
            import ray

            ray.shutdown()  # Spark gets the machine to itself, as Ray had
            spark = spark_rows_per_s(f"{tmp}/n", args.model, cfg, args.rows, 2, f"{tmp}/spark-out")
            report(out, spark_rows_per_s=spark, e2e_vs_spark=rate / spark)
        # raw again: over a long headline the machine's speed drifts; compare with the mean of both
        raw = (raw + raw_rate()) / 2
        report(out, raw_rows_per_s_mean=raw, e2e_vs_raw=rate / raw)

        # both actor layouts on the same 2 cores, on the sample
        configured = f"{cfg.score.num_actors}x{cfg.score.cpus_per_actor:g}"
        layouts = {configured: [], "2x1": ["score.num_actors=2", "score.cpus_per_actor=1"],
                   "1x2": ["score.num_actors=1", "score.cpus_per_actor=2"]}
        for name, extra in layouts.items():
            rate, _ = e2e(config(*extra), sample, args.model, f"{tmp}/out-{name}", s_rows)
            report(out, **{f"sample_e2e_{name}_rows_per_s": rate, f"sample_e2e_{name}_vs_raw": rate / raw})
        if args.with_reasons:
            rate, _ = e2e(config(reasons=True), sample, args.model, f"{tmp}/out-r", s_rows)
            report(out, sample_e2e_with_reasons_rows_per_s=rate)
        seconds = {}
        for label, rows in (("m", m), ("4m", 4 * m)):
            snapshot(Path(tmp) / label, rows, 2, cfg)
            rate, rss = e2e(cfg, f"{tmp}/{label}", args.model, f"{tmp}/out-{label}", rows)
            report(out, **{f"peak_rss_mb_{label}_{rows}_rows": rss})
            seconds[label] = rows / rate
        # two sizes separate the fixed start-up from the per-row cost
        marginal = 3 * m / (seconds["4m"] - seconds["m"])
        report(out, rss_4m_over_m=out[f"peak_rss_mb_4m_{4 * m}_rows"] / out[f"peak_rss_mb_m_{m}_rows"],
               e2e_fixed_seconds=seconds["m"] - m / marginal)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

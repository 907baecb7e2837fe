"""Scoring throughput: end-to-end Ray Data pipeline vs the same model's raw in-process rows/s on the
same rows; model FLOP utilisation against this machine's measured GEMM peak; peak RSS at N and 4N.

    python bench/bench_score.py --model MODEL_DIR --rows 200000 [--sample-rows 4000] [--rss-rows 1000] [--spark] [--memory-only]
                                [key.path=value ...]

The headline is the configured layout's end-to-end rate on all N rows; with --spark, Spark
scores the same N rows right after it, twice (both frameworks pay their own start-up, so all
are compared at the same size): once with nightscore's own inference code inside the
pandas_udf (the platforms alone differ), once with the pandas_udf a team would write around
the PyTorch model directly (the alternative to nightscore's inference code). Raw in-process is the same
model in this process on the same N rows (encoded, then predicted), half of them just before
the headline and half just after, so that it spans the same stretch of a drifting machine; the
actor layouts and the compiled-vs-eager comparison run on a random sample of S of the rows.
Where the actors compile, their package is built on 64 rows before the headline (a node keeps it
for every later night of the model), so that neither raw nor the headline includes a build.
Every end-to-end and Spark run also splits the machine's CPU time between the processes
that run the model and everything else (the platform). Each result is printed as a
`[bench]` line when measured, written to --json as it comes, and printed as JSON at the end.
"""
import argparse
import datetime as dt
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from nightscore import synth
from nightscore.config import load_config
from nightscore.model import store
from nightscore.model.features import text_lengths, to_tensors
from nightscore.model.network import block_list
from nightscore.scoring.execution import cpu_has_bf16
from nightscore.scoring.inference import Predictor, onednn_ready
from nightscore.scoring.pipeline import run
from nightscore.scoring.prepare import model_input

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "local.yaml"
DATE = dt.date(2026, 11, 2)


def gemm_rate(dtype: torch.dtype, threads: int, n: int, seconds: float = 4.0) -> float:
    """Sustained FLOP/s of back-to-back n×n matmuls over a few seconds in this process: the rate
    the model must keep up. (A best-of-5 burst of one matmul ran ~25 % above it on a shared VM.)
    For fp32 the faster of MKL's matmul and oneDNN's prepacked kernel."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    kernels = [lambda: a @ b]
    if dtype == torch.float32 and onednn_ready():
        packed = torch.ops.mkldnn._reorder_linear_weight(b, n)
        kernels.append(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""))
    rates = []
    for kernel in kernels:
        kernel()
        calls, t0 = 0, time.perf_counter()
        while calls == 0 or time.perf_counter() - t0 < seconds:
            kernel()
            calls += 1
        rates.append(calls * 2 * n**3 / (time.perf_counter() - t0))
    return max(rates)


def peaks(cores: int) -> tuple[float, float]:
    """(fp32, bf16) GEMM peaks; the bf16 one only where the CPU has bf16 units (elsewhere the
    actors run fp32, and an emulated bf16 matmul takes minutes to time): NaN there."""
    return gemm_peak(torch.float32, cores), gemm_peak(torch.bfloat16, cores) if cpu_has_bf16() else float("nan")


def gemm_peak(dtype: torch.dtype, cores: int) -> float:
    """The machine's GEMM peak: the best of one process on all cores (1024², 2048² and 4096²
    matmuls) and one single-threaded process per core at once (summed). The peak is the
    machine's, not one library call's: on the AMX VM a 1024² bf16 matmul on 2 threads ran at
    1.25 TFLOP/s, the same as on 1, while 2048² reached 2.4 and two 1-core processes 2.8."""
    import multiprocessing

    threaded = max(gemm_rate(dtype, cores, n) for n in (1024, 2048, 4096))
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        per_core = sum(pool.starmap(gemm_rate, [(dtype, 1, 1024)] * cores))
    torch.set_num_threads(cores)
    return max(threaded, per_core)


def precision_of(predictor: Predictor) -> str:
    """The precision a predictor settled on ("auto" resolved), for the peers to use the same."""
    return "bf16" if predictor.dtype is torch.bfloat16 else "fp32"


def attention_flops_per_token(model, seq: float) -> float:
    """Attention's score and value products: 4 × layers × hidden × seq per token, forward only."""
    cfg = model.backbone.config
    return 4 * cfg.num_hidden_layers * cfg.hidden_size * seq


def model_flops_per_token(model, seq: float) -> float:
    """2 × the transformer blocks' parameters + attention per token, forward only. Not the
    embeddings (a lookup), nor the pooler and heads, which run once per row, not per token."""
    params = sum(p.numel() for p in block_list(model.backbone)[1].parameters())
    return 2 * params + attention_flops_per_token(model, seq)


def sequence_tokens(loaded, inputs: pa.Table) -> int:
    """Tokens the backbone reads over all rows, padding aside: each row's fixed tokens (start,
    one per structured feature, separator) plus its text tokens."""
    return inputs.num_rows * loaded.encoders.fixed_tokens + int(text_lengths(inputs).sum())


def raw_half(predictor: Predictor, rows: pa.Table) -> dict[str, float]:
    """The model in this process on snapshot rows: encode (model_input, text tokenisation
    included), then predict, each timed. "tokenize_s" is the encoding's time."""
    loaded = predictor.loaded
    t0 = time.perf_counter()
    inputs, _ = model_input(rows, loaded.config, str(loaded.root))
    t1 = time.perf_counter()
    predictor.predict(inputs)
    t2 = time.perf_counter()
    return {"rows": rows.num_rows, "tokens": sequence_tokens(loaded, inputs), "tokenize_s": t1 - t0,
            "model_s": t2 - t1}


def merged(halves: list[dict[str, float]]) -> dict[str, float]:
    """Raw's halves as one: rows, tokens and seconds summed."""
    return {k: sum(h[k] for h in halves) for k in halves[0]}


def raw_figures(half: dict[str, float], model, peak32: float, peak16: float, when: str) -> dict[str, float]:
    """One raw half's rows/s (encoding included), and its model FLOP/s over the model time
    alone against the GEMM peaks."""
    seq = half["tokens"] / half["rows"]
    achieved = half["tokens"] * model_flops_per_token(model, seq) / half["model_s"]
    return {f"raw_{when}_rows_per_s": half["rows"] / (half["tokenize_s"] + half["model_s"]),
            f"raw_{when}_tokenize_share": half["tokenize_s"] / (half["tokenize_s"] + half["model_s"]),
            f"mean_tokens_{when}": seq, f"model_gflops_{when}": achieved / 1e9,
            f"mfu_vs_fp32_peak_{when}": achieved / peak32, f"mfu_vs_bf16_peak_{when}": achieved / peak16}


MODEL_PROCESSES = ("ScoringActor", "pyspark.daemon")  # Ray's inference actors, Spark's Python workers


class Usage:
    """Peak memory the run added: the summed RSS of every process it started (the Ray or Spark
    workers), plus what this process and any already running (a Spark JVM left by an earlier
    peer) grew by, not the tables this bench holds; and the CPU time split between the
    processes that run the model and all the others (this driver, the framework's daemons and
    helpers), sampled every 2 s: each sample reads every process's /proc files, a cost raw never
    pays (every 0.5 s it took 0.8 % of a core beside an idle 11-process Ray)."""

    def __init__(self):
        self.peak, self._stop = 0, threading.Event()
        self.samples: list[tuple[float, float, float]] = []  # (time, model CPU-s, other CPU-s) since last
        self._cpu: dict[int, float] = {}
        self._before: dict[int, int] = {}  # RSS of the processes running when the run began

    def _sample(self, me: psutil.Process) -> None:
        total, model, other = 0, 0.0, 0.0
        for p in [me, *me.children(recursive=True)]:
            try:
                total += max(0, p.memory_info().rss - self._before.get(p.pid, 0))
                cpu = sum(p.cpu_times()[:2])
                is_model = any(k in " ".join(p.cmdline()) for k in MODEL_PROCESSES)
            except psutil.Error:
                continue
            delta, self._cpu[p.pid] = cpu - self._cpu.get(p.pid, 0.0), cpu
            model, other = (model + delta, other) if is_model else (model, other + delta)
        self.peak = max(self.peak, total)
        self.samples.append((time.perf_counter(), model, other))

    def _run(self):
        me = psutil.Process()
        self._sample(me)
        while not self._stop.wait(2.0):
            self._sample(me)
        self._sample(me)

    def shares(self, cores: int) -> dict[str, float]:
        """Model processes' share of all CPU time used, and of the machine (cores × wall), over
        the whole run and over its middle half (steady state: start-up and tail left out)."""
        t0, t1 = self.samples[0][0], self.samples[-1][0]
        out = {}
        for name, lo, hi in (("run", t0, t1), ("steady", t0 + (t1 - t0) / 4, t1 - (t1 - t0) / 4)):
            picked = [(m, o) for t, m, o in self.samples[1:] if lo < t <= hi]
            model, other = sum(m for m, _ in picked), sum(o for _, o in picked)
            out[f"{name}_model_cpu_share"] = model / max(model + other, 1e-9)
            out[f"{name}_model_share_of_machine"] = model / max(cores * (hi - lo), 1e-9)
        return out

    def __enter__(self):
        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            try:
                self._before[p.pid] = p.memory_info().rss
            except psutil.Error:
                continue
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


def spark_rows_per_s(snapshot_dir: str, model_dir: str, cfg, rows: int, cores: int, out_dir: str,
                     peer: str, precision: str) -> float:
    """The peer: Spark local mode, one task per core with one torch thread each, the same
    verified model loaded once per task in a pandas_udf, scoring the same rows at the same
    precision as nightscore's actors; both encode the rows as the model directory defines them
    (model_input).

    peer "nightscore": the UDF calls nightscore's own inference code (Predictor: length-sorted
    micro-batches, the same kernels, compiled when the actors compile), so only the platforms
    differ. peer "hf": the UDF a team would write around the PyTorch model directly: each
    micro-batch of rows, in the order they come, padded to its longest text, and the model's
    plain forward run eagerly under inference_mode (and bf16 autocast where the actors run bf16)."""
    import os
    import sys
    from typing import Iterator

    import pandas as pd
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import DoubleType

    from nightscore.model import calibration
    from nightscore.schema import model_features

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    feats = [f.name for f in model_features(cfg.schema)]
    micro_batch, onednn = cfg.score.micro_batch, cfg.score.onednn
    compile_ = cfg.score.compiles(rows / cores)  # each task scores rows / cores, as each actor does
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def inputs_of(frame: pd.DataFrame, loaded) -> pa.Table:
        return model_input(pa.Table.from_pandas(frame, preserve_index=False), loaded.config, str(loaded.root))[0]

    @pandas_udf(DoubleType())
    def score_nightscore(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        loaded = store.load(model_dir)
        predictor = Predictor(loaded, precision=precision, micro_batch=micro_batch, threads=1, onednn=onednn,
                              compile=compile_)
        for frame in batches:
            yield pd.Series(predictor.predict(inputs_of(frame, loaded)).pd)

    @pandas_udf(DoubleType())
    def score_hf(batches: Iterator[pd.DataFrame]) -> Iterator[pd.Series]:
        torch.set_num_threads(1)
        loaded = store.load(model_dir)
        model = loaded.model.eval()
        for frame in batches:
            inputs, logits = inputs_of(frame, loaded), []
            with torch.inference_mode(), autocast:
                for i in range(0, inputs.num_rows, micro_batch):
                    x = to_tensors(inputs.slice(i, micro_batch))
                    logits.append(model(x)["default_logit"].float().numpy())
            yield pd.Series(calibration.apply(loaded.meta["calibration"], np.concatenate(logits)))

    score = {"nightscore": score_nightscore, "hf": score_hf}[peer]
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


def spark_run(snapshot_dir: str, model_dir: str, cfg, rows: int, out_dir: str, peer: str,
              precision: str) -> tuple[float, dict]:
    """(rows/s, CPU shares) of one Spark peer in a fresh process: each run starts its own JVM,
    as a Spark job does (a second session in this process would find the first one's JVM warm)."""
    import multiprocessing

    with Usage() as usage, multiprocessing.get_context("spawn").Pool(1) as pool:
        rate = pool.apply(spark_rows_per_s, (snapshot_dir, model_dir, cfg, rows, 2, out_dir, peer, precision))
    return rate, usage.shares(2)


def pd_gap(ray_out: str, record: dict, spark_out: str, id_col: str) -> float:
    """Largest |PD difference| between Ray's and a Spark peer's outputs, joined on the id: the
    check that both scored the same rows with the same model."""
    import pyarrow.dataset as pads

    ours = pads.dataset([f"{ray_out}/date={DATE}/{f}" for f in record["files"]["scores"]]).to_table(
        columns=["customer_id", "pd_12m"])
    theirs = pads.dataset(spark_out).to_table(columns=[id_col, "pd_12m"]).rename_columns(["customer_id", "spark_pd"])
    joined = ours.join(theirs, "customer_id")
    assert joined.num_rows == ours.num_rows, (joined.num_rows, ours.num_rows)
    return float(np.max(np.abs(joined["pd_12m"].to_numpy() - joined["spark_pd"].to_numpy())))


def e2e(cfg, snapshot_dir: str, model: str, out_dir: str, rows: int) -> tuple[float, float, dict, dict]:
    """(rows/s, peak RSS MB, CPU shares, manifest) of the scoring job's pipeline, Ray start-up
    included; prints where the run's time went (the manifest's phase_seconds)."""
    import ray

    ray.shutdown()  # every run pays its own Ray start, as a nightly job does
    t0 = time.perf_counter()
    with Usage() as usage:
        record = run(cfg, snapshot_dir, model, out_dir, DATE)
    assert record["scored_rows"] == rows, record
    elapsed = time.perf_counter() - t0
    print(f"[bench] {rows} rows, {cfg.score.num_actors} actor(s) x {cfg.score.cpus_per_actor} CPU: {elapsed:.1f} s, "
          f"phases {record['phase_seconds']}", flush=True)
    return rows / elapsed, usage.peak / 2**20, usage.shares(2), record


def report(out: dict, path: str | None = None, **values) -> None:
    """Record results and print them at once (and rewrite --json): a long run shows its
    numbers as they come, and keeps them if it is stopped."""
    out.update(values)
    for k, v in values.items():
        print(f"[bench] {k} = {v:.4g}" if isinstance(v, float) else f"[bench] {k} = {v}", flush=True)
    if path:
        Path(path).write_text(json.dumps(out, indent=2))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=400, help="N: rows for the headline end-to-end run")
    p.add_argument("--sample-rows", type=int, default=4000,
                   help="S: rows (a random sample of the N) for raw and the actor layouts")
    p.add_argument("--rss-rows", type=int, default=0, help="M: peak RSS at M and 4M rows (default S / 4)")
    p.add_argument("--spark", action="store_true", help="also time Spark local mode on the N rows (pip install pyspark)")
    p.add_argument("--spark-peers", default="nightscore,hf", help="which Spark UDFs to time (see spark_rows_per_s)")
    p.add_argument("--with-reasons", action="store_true", help="also time end-to-end on S rows with reason codes on")
    p.add_argument("--json", help="write the results here as they come")
    p.add_argument("--memory-only", action="store_true", help="only the peak RSS at M and 4M rows")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    s_rows = min(args.sample_rows, args.rows)
    m = args.rss_rows or max(100, s_rows // 4)

    def config(*extra: str, reasons: bool = False):
        return load_config(CONFIG, [*([] if reasons else ["scorecard.reason_codes=false"]), *args.overrides, *extra])

    cfg = config()
    out: dict[str, object] = {}

    def note(**values) -> None:
        report(out, args.json, **values)

    headline = dict(rows=args.rows, sample_rows=s_rows, cpu_threads=torch.get_num_threads())
    note(**({} if args.memory_only else headline),
         configured_layout=f"{cfg.score.num_actors} actor(s) x {cfg.score.cpus_per_actor} CPU",
         started=dt.datetime.now().isoformat(timespec="seconds"))
    with tempfile.TemporaryDirectory() as tmp:
        if not args.memory_only:
            table = snapshot(Path(tmp) / "n", args.rows, 1, cfg)
            pick = np.sort(np.random.default_rng(0).choice(args.rows, s_rows, replace=False))
            sample_table = table.take(pick)
            write_partition(Path(tmp) / "s", sample_table)
            sample = f"{tmp}/s"
            loaded = store.load(args.model)
            mcfg = loaded.config
            inputs, _ = model_input(sample_table, mcfg, str(loaded.root))
            # the kernels the headline's actors use (compiled when they compile), and eager ones
            # for comparison (each on its own model copy: prepacking swaps the layers in place)
            compiles = cfg.score.compiles(args.rows / cfg.score.num_actors)
            predictors, setup_s = {}, {}
            for kernels, compile_ in (("configured", compiles), ("eager", False)):
                t0 = time.perf_counter()
                predictors[kernels] = Predictor(store.load(args.model), precision=cfg.score.precision,
                                                micro_batch=cfg.score.micro_batch, threads=2, onednn=cfg.score.onednn,
                                                compile=compile_)
                predictors[kernels].predict(inputs.slice(0, 64))  # precision choice and compilation: not in raw's rate
                setup_s[kernels] = time.perf_counter() - t0
            precision = precision_of(predictors["configured"])
            note(raw_setup_s=setup_s["configured"])

            def raw_rate(kernels: str = "configured") -> float:
                t0 = time.perf_counter()
                predictors[kernels].predict(inputs)
                return s_rows / (time.perf_counter() - t0)

            if compiles:
                note(sample_raw_rows_per_s=raw_rate(), sample_raw_eager_rows_per_s=raw_rate("eager"))
                note(compiled_over_eager=out["sample_raw_rows_per_s"] / out["sample_raw_eager_rows_per_s"])
            halves = [raw_half(predictors["configured"], table.slice(0, args.rows // 2))]
            peak32, peak16 = peaks(2)
            note(precision=precision, compiled=compiles, gemm_peak_fp32_gflops=peak32 / 1e9,
                 gemm_peak_bf16_gflops=peak16 / 1e9, **raw_figures(halves[0], loaded.model, peak32, peak16, "before"))

            # the actors' compiled package (their thread count differs from raw's) built before the
            # headline, as every night after a model's first finds it on the node: raw's rate leaves
            # its own build out too. The build is a one-time cost per model and node (docs/tuning.md)
            if compiles is True:
                write_partition(Path(tmp) / "w", sample_table.slice(0, 64))
                t0 = time.perf_counter()
                e2e(config("score.compile=true"), f"{tmp}/w", args.model, f"{tmp}/out-w", 64)
                note(actor_package_warmup_s=time.perf_counter() - t0)
            # the headline: on a small machine it is the longest part
            rate, rss, shares, record = e2e(cfg, f"{tmp}/n", args.model, f"{tmp}/out", args.rows)
            note(e2e_rows_per_s=rate, e2e_peak_rss_mb=rss, **{f"e2e_{k}": v for k, v in shares.items()})
            # the other half right after it: the machine's speed drifts by tens of percent within
            # minutes, so raw spans the same stretch of time as the headline, on all N rows
            halves.append(raw_half(predictors["configured"], table.slice(args.rows // 2)))
            # the peak again, next to the second half: MFU by half against the peak of its own
            # stretch of time; over all rows against the higher of the two, so drift never flatters it
            after32, after16 = peaks(2)
            whole = merged(halves)
            overall = raw_figures(whole, loaded.model, max(peak32, after32), max(peak16, after16), "all")
            note(gemm_peak_fp32_gflops_after=after32 / 1e9, gemm_peak_bf16_gflops_after=after16 / 1e9,
                 **raw_figures(halves[1], loaded.model, after32, after16, "after"), **overall)
            raw = overall["raw_all_rows_per_s"]
            # raw's rate leaves out its one-time model load and compilation, which the end-to-end
            # run pays in every actor (at once, one per core); this second figure charges raw its own
            with_setup = args.rows / (args.rows / raw + setup_s["configured"])
            note(raw_rows_per_s=raw,
                 raw_model_only_rows_per_s=args.rows / whole["model_s"], e2e_vs_raw=rate / raw,
                 raw_with_setup_rows_per_s=with_setup, e2e_vs_raw_with_setup=rate / with_setup)
            if args.spark:
                import ray

                ray.shutdown()  # Spark gets the machine to itself, as Ray had
                for peer in args.spark_peers.split(","):
                    spark, shares = spark_run(f"{tmp}/n", args.model, cfg, args.rows, f"{tmp}/spark-{peer}", peer,
                                              precision)
                    gap = pd_gap(f"{tmp}/out", record, f"{tmp}/spark-{peer}", cfg.schema.id)
                    note(**{f"spark_{peer}_rows_per_s": spark, f"e2e_vs_spark_{peer}": rate / spark,
                            f"spark_{peer}_max_pd_gap": gap, **{f"spark_{peer}_{k}": v for k, v in shares.items()}})

            # both actor layouts on the same 2 cores, on the sample
            configured = f"{cfg.score.num_actors}x{cfg.score.cpus_per_actor:g}"
            layouts = {configured: [], "2x1": ["score.num_actors=2", "score.cpus_per_actor=1"],
                       "1x2": ["score.num_actors=1", "score.cpus_per_actor=2"]}
            for name, extra in layouts.items():
                rate = e2e(config(*extra), sample, args.model, f"{tmp}/out-{name}", s_rows)[0]
                note(**{f"sample_e2e_{name}_rows_per_s": rate, f"sample_e2e_{name}_vs_raw": rate / raw})
            if args.with_reasons:
                rate = e2e(config(reasons=True), sample, args.model, f"{tmp}/out-r", s_rows)[0]
                note(sample_e2e_with_reasons_rows_per_s=rate)
        memory_and_fixed_cost(cfg, Path(tmp), args.model, m, note)
        note(finished=dt.datetime.now().isoformat(timespec="seconds"))
    print(json.dumps(out, indent=2))


def memory_and_fixed_cost(cfg, tmp: Path, model: str, m: int, note: Callable[..., None]) -> None:
    """Peak memory the scoring run adds at M and 4M rows, and (two sizes separate the fixed
    start-up from the per-row cost) the fixed seconds per run."""
    seconds, peak = {}, {}
    for label, rows in (("m", m), ("4m", 4 * m)):
        snapshot(tmp / label, rows, 2, cfg)
        rate, peak[label] = e2e(cfg, str(tmp / label), model, str(tmp / f"out-{label}"), rows)[:2]
        note(**{f"peak_rss_mb_{label}_{rows}_rows": peak[label]})
        seconds[label] = rows / rate
    marginal = 3 * m / (seconds["4m"] - seconds["m"])
    note(rss_4m_over_m=peak["4m"] / peak["m"], e2e_fixed_seconds=seconds["m"] - m / marginal)


if __name__ == "__main__":
    main()

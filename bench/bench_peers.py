"""Ray vs Spark with the machine's drift cancelled: interleaved rounds in rotating order.

    python bench/bench_peers.py --model MODEL_DIR --rows 30000 [--rounds 3] [--peers nightscore,hf]
                                [--json FILE] [key.path=value ...]

On a shared VM the speed of the same code drifts by a third within an hour (bench_score's
third run), so timing one framework after the other compares hours, not frameworks. Here the
N rows are split into R fresh snapshots; each round scores its snapshot with every contender
(nightscore's end-to-end Ray pipeline, then the Spark peers of `bench_score.spark_rows_per_s`),
each in its own fresh start, the order rotated every round, so when R is a multiple of the
number of contenders (a Latin square) every contender runs early, mid and late equally often. A raw in-process
probe (the same fixed rows before every round and after the last) shows the drift itself.
Reported: each contender's pooled rows/s (all its rows over all its seconds), the per-round
ratios Ray / peer (neighbours in time) and their geometric mean, and each peer's largest PD
gap to Ray's outputs (both scored the same rows with the same model).
"""
import argparse
import datetime as dt
import math
import tempfile
import time
from pathlib import Path

from bench_score import CONFIG, e2e, pd_gap, precision_of, report, snapshot, spark_run
from nightscore.config import load_config
from nightscore.model import store
from nightscore.scoring.inference import Predictor
from nightscore.scoring.prepare import model_input

PROBE_ROWS = 300


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=3000, help="N: rows over all rounds, each contender")
    p.add_argument("--rounds", type=int, default=3, help="R: rounds of N / R fresh rows each")
    p.add_argument("--peers", default="nightscore,hf", help="Spark peers (see bench_score.spark_rows_per_s)")
    p.add_argument("--json", help="write the results here as they come")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    cfg = load_config(CONFIG, ["scorecard.reason_codes=false", *args.overrides])
    contenders = ["ray", *args.peers.split(",")]
    chunk = args.rows // args.rounds
    out: dict[str, object] = {}

    def note(**values) -> None:
        report(out, args.json, **values)

    note(rows=chunk * args.rounds, rounds=args.rounds, contenders=",".join(contenders),
         ray_layout=f"{cfg.score.num_actors} actor(s) x {cfg.score.cpus_per_actor} CPU",
         started=dt.datetime.now().isoformat(timespec="seconds"))
    seconds = {c: 0.0 for c in contenders}
    ratios: dict[str, list[float]] = {c: [] for c in contenders[1:]}
    with tempfile.TemporaryDirectory() as tmp:
        loaded = store.load(args.model)
        probe_table = snapshot(Path(tmp) / "probe", PROBE_ROWS, 99, cfg)
        probe_inputs, _ = model_input(probe_table, loaded.config, str(loaded.root))
        predictor = Predictor(loaded, precision=cfg.score.precision, micro_batch=cfg.score.micro_batch,
                              threads=2, onednn=cfg.score.onednn)
        predictor.predict(probe_inputs.slice(0, 32))  # warm-up and precision choice, not timed
        precision = precision_of(predictor)
        note(precision=precision, compiled=cfg.score.compiles(chunk / cfg.score.num_actors))

        def probe(label: str) -> None:
            t0 = time.perf_counter()
            predictor.predict(probe_inputs)
            note(**{f"raw_probe_{label}_rows_per_s": PROBE_ROWS / (time.perf_counter() - t0)})

        for r in range(args.rounds):
            probe(f"round{r}")
            snap = f"{tmp}/r{r}"
            snapshot(Path(snap), chunk, 10 + r, cfg)
            order = contenders[r % len(contenders):] + contenders[:r % len(contenders)]
            rates: dict[str, float] = {}
            for c in order:
                if c == "ray":
                    rates[c], _, shares, record = e2e(cfg, snap, args.model, f"{tmp}/out-r{r}", chunk)
                else:
                    import ray

                    ray.shutdown()  # the peer gets the machine to itself
                    rates[c], shares = spark_run(snap, args.model, cfg, chunk, f"{tmp}/spark-{c}-r{r}", c, precision)
                seconds[c] += chunk / rates[c]
                note(**{f"round{r}_{c}_rows_per_s": rates[c],
                        f"round{r}_{c}_steady_model_share_of_machine": shares["steady_model_share_of_machine"]})
            for c in contenders[1:]:
                ratios[c].append(rates["ray"] / rates[c])
                note(**{f"round{r}_ray_vs_{c}": ratios[c][-1],
                        f"round{r}_{c}_max_pd_gap": pd_gap(f"{tmp}/out-r{r}", record, f"{tmp}/spark-{c}-r{r}",
                                                           cfg.schema.id)})
        probe("end")
    total = chunk * args.rounds
    pooled = {c: total / s for c, s in seconds.items()}
    note(**{f"pooled_{c}_rows_per_s": v for c, v in pooled.items()})
    for c in contenders[1:]:
        note(**{f"pooled_ray_vs_{c}": pooled["ray"] / pooled[c],
                f"geomean_round_ray_vs_{c}": math.exp(sum(map(math.log, ratios[c])) / len(ratios[c]))})
    note(finished=dt.datetime.now().isoformat(timespec="seconds"))


if __name__ == "__main__":
    main()

"""Feature tokens against the text-only model they replaced: training samples/s and scoring rows/s,
same machine, same rows, one run, each through its own code's real jobs (jobs/train.py, jobs/score.py).

    python bench/bench_vs_text.py --text-ref 28661e1 [--rows 20000] [--train-rows 2000] [--rounds 2] [key.path=value ...]

`--text-ref` is the last commit of the text-only model (rows spelled out as "Label: value; …").
It is checked out into a temporary git worktree and run with the same virtual environment; both
sides train MiniLM for one epoch on the same labelled rows (local.yaml, 2 workers, ZeRO-2) and
score the same unlabelled snapshot (2 actors x 1 CPU, default compile setting); overrides apply to
both sides' scoring (e.g. scorecard.reason_codes=false).
Scoring alternates old/new for `--rounds` rounds so the machine's drift falls on both sides.
"""
import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATE = dt.date(2026, 11, 23)
TRAIN_DATE = dt.date(2026, 10, 31)


def job(tree: Path, script: str, *args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree / "lib")}  # this tree's library, not the installed checkout
    subprocess.run([sys.executable, str(tree / "jobs" / script), *args], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--text-ref", required=True, help="commit of the text-only model")
    p.add_argument("--rows", type=int, default=20_000, help="rows scored")
    p.add_argument("--train-rows", type=int, default=2_000, help="labelled rows trained on (one epoch)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json")
    p.add_argument("overrides", nargs="*", help="config overrides for both sides' scoring")
    args = p.parse_args()
    result: dict = {"text_ref": args.text_ref, "rows": args.rows, "train_rows": args.train_rows,
                    "score_overrides": args.overrides, "sides": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "text-only"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(old), args.text_ref], check=True,
                       stdout=subprocess.DEVNULL)
        try:
            job(REPO, "make_snapshots.py", "--out", str(tmp / "train"), "--date", str(TRAIN_DATE),
                "--customers", str(args.train_rows), "--labels", "--seed", "1")
            job(REPO, "make_snapshots.py", "--out", str(tmp / "snap"), "--date", str(DATE),
                "--customers", str(args.rows), "--seed", "2")
            sides = {"text-only": old, "feature tokens": REPO}
            for name, tree in sides.items():
                model = tmp / f"model-{name.replace(' ', '-')}"
                started = time.time()
                job(tree, "train.py", "--train", str(tmp / "train"), "--out", str(model), "--storage", str(tmp / "runs"),
                    "--name", name.replace(" ", "-"), "train.epochs=1")
                best = json.loads((model / "metrics.json").read_text())["best"]
                result["sides"][name] = {"train_wall_s": round(time.time() - started, 1),
                                         "train_samples_per_s": best["train_samples_per_s"],
                                         "steady_samples_per_s": best["steady_samples_per_s"],
                                         "score_rows_per_s": [], "scoring_phase_s": []}
                print(f"[vs-text] {name}: trained at {best['steady_samples_per_s']:.1f} samples/s (steady)", flush=True)
            for r in range(args.rounds):
                for name, tree in (sides.items() if r % 2 == 0 else reversed(list(sides.items()))):
                    out = tmp / f"scores-{name.replace(' ', '-')}-{r}"
                    job(tree, "score.py", "--input", str(tmp / "snap"), "--model", str(tmp / f"model-{name.replace(' ', '-')}"),
                        "--output", str(out), "--date", str(DATE), *args.overrides)
                    manifest = json.loads((out / f"date={DATE}" / "_manifest.json").read_text())
                    side = result["sides"][name]
                    side["score_rows_per_s"].append(manifest["rows_per_s"])
                    side["scoring_phase_s"].append(manifest["phase_seconds"]["scoring"])
                    print(f"[vs-text] round {r + 1} {name}: {manifest['rows_per_s']} rows/s end to end "
                          f"(scoring phase {manifest['phase_seconds']['scoring']} s)", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)], check=False)
            shutil.rmtree(old, ignore_errors=True)
    text, tokens = result["sides"]["text-only"], result["sides"]["feature tokens"]
    result["score_ratio"] = statistics.median(tokens["score_rows_per_s"]) / statistics.median(text["score_rows_per_s"])
    result["train_ratio"] = tokens["steady_samples_per_s"] / text["steady_samples_per_s"]
    print(json.dumps(result, indent=2))
    print(f"\nscoring rows/s (median of {args.rounds}): feature tokens / text-only = {result['score_ratio']:.2f} x; "
          f"training samples/s (steady): {result['train_ratio']:.2f} x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Score one snapshot date: calibrated PD, credit score, band, reason codes, suitable products.

    python jobs/score.py --config jobs/configs/local.yaml --input SNAPSHOTS --model MODEL --output OUT --date YYYY-MM-DD [--force] [--wait SECONDS]
"""
from nightscore import cli
from nightscore.scoring.pipeline import InvariantError, run


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--input", required=True, help="snapshot root (holding date=… folders) or one partition")
    p.add_argument("--model", required=True, help="model directory written by jobs/train.py (local or s3://)")
    p.add_argument("--output", required=True, help="output root; writes <output>/date=YYYY-MM-DD/")
    p.add_argument("--date", required=True, type=cli.date_arg, help="snapshot date, YYYY-MM-DD")
    p.add_argument("--force", action="store_true", help="replace an already committed date (atomically)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="if another run holds the date, wait this long for it (default: exit 1 at once)")
    args, cfg = cli.parse(p)

    with cli.clear_errors():
        try:
            record = run(cfg, args.input, args.model, args.output, args.date, force=args.force, wait=args.wait)
        except InvariantError as exc:
            cli.fail(str(exc), cli.EXIT_FAILED)

    where = f"{args.output.rstrip('/')}/date={args.date}"
    if record.get("skipped"):
        print(f"[score] {args.date} is already committed (run {record['run_id']}) at {where}; "
              f"nothing to do (use --force to replace it)")
        return
    print(f"[score] committed {where}: {record['scored_rows']} scored, {record['quarantined_rows']} quarantined "
          f"of {record['input_rows']} rows ({record['rows_per_s']} rows/s), model {record['model_version']}")
    print("[score] seconds: " + ", ".join(f"{k} {v:g}" for k, v in record["phase_seconds"].items()))


if __name__ == "__main__":
    main()

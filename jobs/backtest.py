"""Back-test a committed scores date against the outcomes that followed it.

    python jobs/backtest.py --scores SCORES --outcomes OUTCOMES --date YYYY-MM-DD --out REPORTS
        [--challenger SHADOW] [--config FILE] [key.path=value ...]

Writes <out>/date=YYYY-MM-DD/backtest.json and a self-contained backtest.html; with
--challenger, the challenger's shadow scores of the same date are tested beside them.
Exit codes: 0 ok; 1 the run failed (date not committed, unreadable or incomplete outcomes);
2 bad usage or config; 3 a `backtest:` threshold was crossed (the report is written).
"""
from nightscore import backtest, cli


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--scores", required=True, help="scores root written by jobs/score.py (committed dates only)")
    p.add_argument("--outcomes", required=True, help="outcomes root holding date=YYYY-MM-DD/ Parquet partitions")
    p.add_argument("--date", required=True, type=cli.date_arg, help="the scored snapshot date, YYYY-MM-DD")
    p.add_argument("--out", required=True, help="report root; writes <out>/date=YYYY-MM-DD/")
    p.add_argument("--challenger", help="a challenger's shadow scores root (nightly.challenger_output)")
    args, cfg = cli.parse(p)

    with cli.clear_errors():
        report = backtest.run(cfg, args.scores, args.outcomes, args.date, args.out, args.challenger)

    for line in backtest.summary(report):
        print(f"[backtest] {line}")
    if report["breaches"]:
        cli.fail("back-test threshold crossed: read the report", cli.EXIT_ALERT)


if __name__ == "__main__":
    main()

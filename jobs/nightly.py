"""The scheduled nightly run: score one snapshot date, then write the monitoring report.

    python jobs/nightly.py --config jobs/configs/local.yaml [--date YYYY-MM-DD] [--force] [--wait SECONDS]

With nightly.outcomes set, it also back-tests every committed date whose outcomes have landed;
with nightly.challenger, it scores the challenger into its shadow root and compares the two.

Exit codes: 0 ok; 1 the run failed and nothing was committed; 2 bad usage or config;
3 a monitoring alert or a back-test breach (outputs were committed; read the report).
"""
from nightscore import cli
from nightscore.challenger import summary
from nightscore.nightly import run
from nightscore.scoring.pipeline import InvariantError


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--date", type=cli.date_arg, help="snapshot date (default: yesterday in nightly.timezone)")
    p.add_argument("--force", action="store_true", help="replace an already committed date (atomically)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="if another run holds the date, wait this long for it (default: exit 1 at once)")
    args, cfg = cli.parse(p)

    with cli.clear_errors():
        try:
            record, report = run(cfg, args.date, force=args.force, wait=args.wait)
        except InvariantError as exc:
            cli.fail(str(exc), cli.EXIT_FAILED)

    state = "already committed, not rescored" if record.get("skipped") else "committed"
    print(f"[nightly] {record['snapshot_date']}: {state}: {record['scored_rows']} scored, "
          f"{record['quarantined_rows']} quarantined (run {record['run_id']}, model {record['model_version']})")
    print(f"[nightly] scores under {cfg.nightly.output.rstrip('/')}/date={record['snapshot_date']}/")
    if record.get("ab_test"):
        ab = record["ab_test"]
        print(f"[nightly] A/B test: {ab['rows']['challenger']} customers ({ab['share']:.0%} share) got the "
              "challenger's recommendations")
    challenger = report.get("challenger")
    if challenger and "error" in challenger:
        print(f"[nightly] challenger failed (the champion's output is unaffected): {challenger['error']}")
    elif challenger:
        print(f"[nightly] {summary(challenger)}; shadow scores under {cfg.nightly.shadow}")
    for bt in report["backtests"]:
        if "error" in bt:
            print(f"[nightly] back-test of {bt['date']} could not run: {bt['error']}")
        else:
            print(f"[nightly] back-tested {bt['date']}: {bt['status'].upper()}, report {bt['report_html']}")
    print(f"[nightly] report: {report['report_html']}  status: {report['status'].upper()}")
    for alert in report["alerts"]:
        value = "" if alert["value"] is None else f" = {alert['value']:.3f} (threshold {alert['threshold']})"
        print(f"[nightly]   {alert['level']}: {alert['metric']}{value}")
    if report["status"] == "alert":
        cli.fail("monitoring alert: outputs are committed; review the report before using them", cli.EXIT_ALERT)


if __name__ == "__main__":
    main()

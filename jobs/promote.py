"""Approve a model for the nightly job: move the approved-model pointer, on evidence and on record.

    python jobs/promote.py --pointer POINTER --model MODEL --why "reason" [--reports REPORTS]
        [--override] [--config FILE] [key.path=value ...]

The pointer moves only when the model's latest back-test under --reports (default:
nightly.reports of the config) passed, as the champion or as the challenger; --override moves
it anyway. Every attempt, refused or done, is appended to promotions.jsonl beside the pointer.
Exit codes: 0 promoted; 1 the model or storage failed; 2 refused (no passing evidence) or bad usage.
"""
from nightscore import cli
from nightscore.promotion import PromotionRefused, audit_log, promote


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--pointer", required=True, help="the approved-model pointer file (nightly.model_pointer)")
    p.add_argument("--model", required=True, help="the model directory to approve")
    p.add_argument("--why", required=True, help="the reason, recorded in the audit log")
    p.add_argument("--reports", help="where the back-tests are (default: nightly.reports of the config)")
    p.add_argument("--override", action="store_true", help="promote without passing evidence (on record)")
    args, cfg = cli.parse(p)
    if not args.why.strip():
        cli.fail("--why must give a reason", cli.EXIT_USAGE)
    reports = args.reports or (cfg.nightly.reports if cfg.nightly else None)

    with cli.clear_errors():
        try:
            entry = promote(args.pointer, args.model, args.why, reports, args.override, cfg.storage.s3)
        except PromotionRefused as exc:
            cli.fail(str(exc), cli.EXIT_USAGE)

    evidence = entry["evidence"]
    basis = (f"back-test {evidence['file']} ({evidence['role']}, {'passed' if evidence['passed'] else 'failed'})"
             if evidence else "no back-test")
    print(f"[promote] {args.pointer} -> {args.model} (manifest sha256 {entry['to']['manifest_sha256'][:12]}…)")
    override = "; OVERRIDE" if entry["override"] else ""
    print(f"[promote] evidence: {basis}{override}; recorded in {audit_log(args.pointer)}")


if __name__ == "__main__":
    main()

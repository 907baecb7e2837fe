"""Evaluate a model directory on a labelled snapshot: metrics JSON, ROC / KS / calibration / score plots.

    python jobs/evaluate.py --config jobs/configs/local.yaml --model MODEL --data URI --out DIR
"""
from nightscore import cli
from nightscore.evaluation import evaluate, plots, write


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--model", required=True, help="model directory (local or s3://)")
    p.add_argument("--data", required=True, help="labelled snapshot: partition, folder or file (local or s3://)")
    p.add_argument("--out", required=True, help="folder for metrics.json, plots and report.html (local or s3://)")
    args, cfg = cli.parse(p)

    with cli.clear_errors():
        result, arrays = evaluate(cfg, args.model, args.data)
        report = write(result, plots(result, arrays), args.out, cfg)

    shown = "  ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
    print(f"[evaluate] {result['evaluated_rows']} rows ({result['quarantined_rows']} quarantined): {shown}")
    print(f"[evaluate] metrics and plots in {args.out}; open {report}")


if __name__ == "__main__":
    main()

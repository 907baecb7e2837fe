"""Fine-tune the scoring transformer with Ray Train + DeepSpeed ZeRO and write a model directory.

    python jobs/train.py --config jobs/configs/local.yaml --train DATA_URI [--valid URI] --out MODEL_URI
"""
from nightscore import cli
from nightscore.training.trainer import train


def main() -> None:
    p = cli.parser(__doc__)
    p.add_argument("--train", required=True, help="labelled snapshot: a date=… partition, folder or file (local or s3://)")
    p.add_argument("--valid", help="validation snapshot (default: a stable customer_id-hash split of --train)")
    p.add_argument("--out", required=True, help="model directory to write (local or s3://)")
    p.add_argument("--storage", default="~/nightscore_runs", help="Ray Train checkpoint storage (shared on clusters)")
    p.add_argument("--name", help="run name (default: train-<utc timestamp>)")
    args, cfg = cli.parse(p)

    with cli.clear_errors():
        summary = train(cfg, args.train, args.valid, args.out, storage_path=args.storage, run_name=args.name)

    best = "  ".join(f"{k} {v:.4f}" for k, v in summary["best"].items() if isinstance(v, float))
    print(f"[train] model {summary['version']} written to {summary['model_uri']}")
    print(f"[train] best epoch: {best}")


if __name__ == "__main__":
    main()

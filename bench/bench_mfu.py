"""Where the compiled model's time goes, and what caps its FLOP utilisation: the forward pass
(backbone and heads on the input embeddings, the part scoring compiles; feature tokens and wide
terms stay eager) profiled by kernel class (linear layers, attention's kernels, Inductor's fused
element-wise kernels, attention's softmax among them), each class's FLOP/s, and every attention
kernel PyTorch offers on this CPU at the model's attention shape. The rate is the cached
package's; the profile is of the same graph JIT-compiled, whose kernels the profiler can tell
apart. Tokens per row: the fixed ones (start, one per structured feature, separator) plus text.

    python bench/bench_mfu.py --model MODEL_DIR [--rows 600] [--threads 2] [--peak GFLOPS]

--peak: the bf16 GEMM peak in GFLOP/s, e.g. the one bench_score.py reported in the same
session; without it this machine's is measured as bench_score.py does (~30 s).
"""
import argparse
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from bench_score import CONFIG, DATE, attention_flops_per_token, gemm_peak, model_flops_per_token, sequence_tokens
from nightscore import synth
from nightscore.config import load_config
from nightscore.model import store
from nightscore.scoring.aot import bmm_attention, package_form
from nightscore.scoring.inference import Predictor, compiled
from nightscore.scoring.prepare import model_input

KERNELS = {"attention": ("attention", "bmm"), "linear": ("linear", "addmm", "mm")}  # first match wins


def kernel_class(name: str) -> str:
    low = name.lower()
    return next((k for k, keys in KERNELS.items() if any(x in low for x in keys)), "other")


def attention_rates(batch: int, heads: int, seq: int, dim: int, reps: int = 20) -> dict[str, float]:
    """GFLOP/s (4·b·h·L²·d per call) of each attention implementation at one shape, in bf16."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q, k, v = (torch.randn(batch, heads, seq, dim, dtype=torch.bfloat16) for _ in range(3))
    lengths = torch.full((batch,), seq - seq // 10)
    keep = torch.arange(seq)[None, None, None, :] < lengths[:, None, None, None]
    bias = torch.zeros(keep.shape, dtype=torch.bfloat16).masked_fill(~keep, float("-inf"))

    def math(q, k, v, bias):
        return torch.softmax((q @ k.transpose(-1, -2)) * dim**-0.5 + bias, -1) @ v

    block_mask = create_block_mask(lambda b, h, qi, kv: kv < lengths[b], batch, None, seq, seq, device="cpu")
    flex = torch.compile(flex_attention)
    math_compiled = torch.compile(math)
    package = torch.compile(bmm_attention)
    full_bias = bias.expand(batch, 1, seq, seq).float()  # Hugging Face's eager mask: (rows, 1, tokens, tokens)
    candidates = {
        "bmm_attention compiled (the package's)": lambda: package(None, q, k, v, full_bias),
        "sdpa (flash kernel)": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=keep),
        "math: matmul, softmax, matmul": lambda: math(q, k, v, bias),
        "math compiled by Inductor": lambda: math_compiled(q, k, v, bias),
        "flex_attention compiled": lambda: flex(q, k, v, block_mask=block_mask),
    }
    rates = {}
    for name, fn in candidates.items():
        for _ in range(3):
            fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        rates[name] = 4 * batch * heads * seq * seq * dim * reps / (time.perf_counter() - t0) / 1e9
    return rates


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peak", type=float, help="bf16 GEMM peak, GFLOP/s (default: measured)")
    args = p.parse_args()
    peak = args.peak or gemm_peak(torch.bfloat16, args.threads) / 1e9
    cfg = load_config(CONFIG)
    loaded = store.load(args.model)
    mcfg = loaded.config
    table, _ = synth.generate(args.rows, DATE, 7, synth.catalog_product_ids(cfg.products.catalog))
    inputs, _ = model_input(table, mcfg, str(loaded.root))
    tokens = sequence_tokens(loaded, inputs)  # fixed tokens + text tokens, over all rows
    predictor = Predictor(loaded, precision="bf16", micro_batch=cfg.score.micro_batch, threads=args.threads,
                          compile=True)
    predictor.predict(inputs)  # build or load the package
    t0 = time.perf_counter()
    predictor.predict(inputs)
    wall = time.perf_counter() - t0
    # the package's graph (encode on the input embeddings), JIT-compiled: its kernels show in the profile
    predictor.encode = compiled(package_form(predictor.model, torch.bfloat16).encode)
    predictor.predict(inputs)  # compile, and every batch shape once
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        predictor.predict(inputs)

    bb = loaded.model.backbone.config
    seq = tokens / args.rows
    total_flops = tokens * model_flops_per_token(loaded.model, seq)
    attn_flops = tokens * attention_flops_per_token(loaded.model, seq)
    spent = {"linear": 0.0, "attention": 0.0, "other": 0.0}
    for e in prof.key_averages():
        if e.self_cpu_time_total > 0:
            spent[kernel_class(e.key)] += e.self_cpu_time_total / 1e6
    profiled = sum(spent.values())
    print(f"{args.rows} rows, {seq:.1f} tokens/row, {args.threads} thread(s): {args.rows / wall:.1f} rows/s, "
          f"{total_flops / wall / 1e9:.0f} GFLOP/s = {total_flops / wall / 1e9 / peak:.1%} of the {peak:.0f} GFLOP/s peak")
    flops = {"linear": total_flops - attn_flops, "attention": attn_flops, "other": 0.0}
    for name, seconds in spent.items():
        rate = f"{flops[name] / seconds / 1e9:7.0f} GFLOP/s" if flops[name] and seconds else "  (no GEMM FLOPs)"
        print(f"  {name:10s} {seconds / profiled:6.1%} of the time {rate}")
    ceiling = total_flops / (spent["linear"] / profiled * wall) / 1e9 / peak
    print(f"  MFU if attention and the fused kernels took no time at all: {ceiling:.1%}")
    batch = predictor.micro_batch
    print(f"attention kernels at the model's shape (batch {batch}, {bb.num_attention_heads} heads, "
          f"{round(seq)} tokens, head dim {bb.hidden_size // bb.num_attention_heads}), bf16:")
    for name, rate in attention_rates(batch, bb.num_attention_heads, round(seq),
                                      bb.hidden_size // bb.num_attention_heads).items():
        print(f"  {name:36s} {rate:6.0f} GFLOP/s = {rate / peak:.1%} of the peak")


if __name__ == "__main__":
    main()

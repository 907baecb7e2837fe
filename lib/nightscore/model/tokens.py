"""Text -> token ids, shared by training, scoring and evaluation (no padding: batches pad themselves)."""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa


@functools.lru_cache(maxsize=4)
def tokenizer_for(path: str):
    """One tokenizer per process and path (Ray tasks reuse worker processes)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False)


def tokenize(texts: pa.Array, tokenizer, max_length: int) -> pa.ListArray:
    """Token ids (with special tokens, truncated) as list<int32>, one list per text."""
    ids = tokenizer(texts.to_pylist(), truncation=True, max_length=max_length)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int32, count=len(ids))
    offsets = np.zeros(len(ids) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))

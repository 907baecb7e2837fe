"""The backbone's tokenizer for free-text features, shared by training, scoring and evaluation.

Encoding runs on the Rust `tokenizers` backend, the same one a Hugging Face fast tokenizer
wraps: importing it takes milliseconds where `transformers` (which pulls in torch) takes
seconds, and Ray Data's preparation workers start once per run.
"""
from __future__ import annotations

import functools
from pathlib import Path


@functools.lru_cache(maxsize=4)
def tokenizer_for(path: str):
    """One backend tokenizer per process and path (Ray tasks reuse worker processes).

    A model directory always holds `tokenizer.json`; a backbone without one (slow-only
    tokenizer) is converted by `transformers`."""
    file = Path(path) / "tokenizer.json"
    if file.is_file():
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(file))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, trust_remote_code=False).backend_tokenizer

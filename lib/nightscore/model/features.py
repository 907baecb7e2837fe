"""Encoded rows (see `encode`) -> the backbone's input embeddings, and the wide path to the heads.

A structured feature's token is its value embedding plus its identity embedding; the identity
starts as the backbone's own embedding of the feature's label (as TP-BERTa does), so the
pretrained model still reads which field it is. Numbers go through piecewise-linear embeddings
(`rtdl_num_embeddings`, version B: linear at first, the piecewise part learnt), with a learned
vector for null; categories and list items through per-value embeddings (a list is the mean of
its items). Text tokens keep the backbone's word embeddings. The sequence is

    [start] feature_1 … feature_k [sep] text tokens … [sep] [padding]

The wide path adds, per head output, one learned term per feature (piecewise-linear in numbers,
one weight per category or item) to the heads' logits: what a scorecard captures, learnt jointly
with the transformer, which models what the terms cannot.
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from rtdl_num_embeddings import PiecewiseLinearEmbeddings, PiecewiseLinearEncoding
from torch import nn

from ..encode import CATEGORY_FIRST, ITEM_FIRST, LIST_NULL, NULL, Encoders

INPUT_KEYS = ("numeric", "categorical", "list_items", "list_lengths", "text_ids", "text_field")


def _offsets(sizes: list[int]) -> torch.Tensor:
    return torch.tensor(np.r_[0, np.cumsum(sizes)[:-1]] if sizes else [], dtype=torch.long)


def _bins(enc: Encoders) -> list[torch.Tensor]:
    return [torch.tensor(e.edges, dtype=torch.float32) for e in enc.numeric]


def _value_tables(module: nn.Module, enc: Encoders, width: int) -> None:
    """`categories` (one row per category slot of every categorical feature) and `items` (one per
    list-item slot, a bag's mean), each with the offset of every feature's first slot."""
    cat_sizes = [len(v.values) + CATEGORY_FIRST for v in enc.categorical]
    module.categories = nn.Embedding(max(sum(cat_sizes), 1), width)
    module.register_buffer("category_offsets", _offsets(cat_sizes), persistent=False)
    item_sizes = [len(v.values) + ITEM_FIRST for v in enc.lists]
    module.items = nn.EmbeddingBag(max(sum(item_sizes), 1), width, mode="mean")
    module.register_buffer("item_offsets", _offsets(item_sizes), persistent=False)


def _quietly(build, *args, **kwargs):
    """rtdl warns about every feature with a single bin (a count that is mostly 0, a flag): a
    valid encoding (min-max scaling), said here once per model, not as a warning per feature."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*two bin edges.*")
        return build(*args, **kwargs)


class FeatureEmbedder(nn.Module):
    def __init__(self, enc: Encoders, word_embeddings: nn.Embedding):
        super().__init__()
        self.enc = enc
        d = word_embeddings.embedding_dim
        std = float(word_embeddings.weight.detach().float().std())
        with torch.no_grad():
            identity = torch.stack([word_embeddings(torch.tensor(enc.labels[name] or [enc.pad_id])).float().mean(0)
                                    for name in enc.structured]) if enc.structured else torch.zeros(0, d)
        self.identity = nn.Parameter(identity)
        n_num = len(enc.numeric)
        self.numeric = _quietly(PiecewiseLinearEmbeddings, _bins(enc), d, activation=False, version="B") \
            if n_num else None
        self.numeric_null = nn.Parameter(torch.randn(n_num, d) * std)
        _value_tables(self, enc, d)
        nn.init.normal_(self.categories.weight, std=std)
        nn.init.normal_(self.items.weight, std=std)

    def structured(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(rows, structured features, d): value + identity embedding, in token order."""
        parts = []
        if self.numeric is not None:
            v = x["numeric"]
            null = torch.isnan(v)
            emb = self._numbers(torch.nan_to_num(v))
            parts.append(torch.where(null[..., None], self.numeric_null.to(emb.dtype), emb))
        if len(self.category_offsets):
            parts.append(self.categories(x["categorical"] + self.category_offsets))
        if len(self.item_offsets):
            parts.append(self.items(*_bags(x, self.item_offsets)).view(len(x["list_lengths"]), -1,
                                                                        self.identity.shape[1]))
        rows = len(next(iter(x.values())))
        out = torch.cat(parts, 1) if parts else self.identity.new_zeros(rows, 0, self.identity.shape[1])
        return out + self.identity.to(out.dtype)

    def _numbers(self, v: torch.Tensor) -> torch.Tensor:
        """PiecewiseLinearEmbeddings' forward (version B, no activation) in the weights' dtype: its
        bin edges are fp32 buffers, and under DeepSpeed's bf16 the weights are bf16."""
        m = self.numeric
        dtype = m.linear.weight.dtype
        return m.linear0(v.to(dtype)) + m.linear(m.impl(v.float()).to(dtype))

    def null_tokens(self) -> torch.Tensor:
        """(structured features, d): each feature's token when its value is null, the baseline
        attributions are measured from."""
        return self.structured(null_inputs(self.enc, self.identity.device))[0]

    def forward(self, x: dict[str, torch.Tensor], word_embeddings: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embeddings, attention mask) for the backbone's `inputs_embeds`."""
        feats = self.structured(x)
        rows, device = feats.shape[0], feats.device
        head = word_embeddings(torch.tensor(self.enc.start_ids, dtype=torch.long, device=device)).expand(rows, -1, -1)
        sep = word_embeddings(torch.tensor(self.enc.sep_ids, dtype=torch.long, device=device)).expand(rows, -1, -1)
        parts = [head.to(feats.dtype), feats, sep.to(feats.dtype)]
        mask = [torch.ones(rows, head.shape[1] + feats.shape[1] + sep.shape[1], dtype=torch.long, device=device)]
        if "text_ids" in x:
            parts.append(word_embeddings(x["text_ids"]).to(feats.dtype))
            mask.append(x["text_mask"])
        return torch.cat(parts, 1), torch.cat(mask, 1)

    def token_fields(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(rows, tokens): the feature index (in `enc.fields`) each token stands for; -1 for start,
        separators and padding. Reason codes sum attributions by it."""
        enc = self.enc
        fixed = [-1] * len(enc.start_ids) + [enc.fields.index(n) for n in enc.structured] + [-1] * len(enc.sep_ids)
        rows = len(next(iter(x.values())))
        out = torch.tensor(fixed, dtype=torch.long).expand(rows, -1)
        if "text_field" in x:
            out = torch.cat([out, x["text_field"].long().cpu()], 1)
        return out


def null_inputs(enc: Encoders, device: torch.device) -> dict[str, torch.Tensor]:
    """One row with every structured feature null."""
    x: dict[str, torch.Tensor] = {}
    if enc.numeric:
        x["numeric"] = torch.full((1, len(enc.numeric)), float("nan"), device=device)
    if enc.categorical:
        x["categorical"] = torch.full((1, len(enc.categorical)), NULL, dtype=torch.long, device=device)
    if enc.lists:
        x["list_items"] = torch.full((len(enc.lists),), LIST_NULL, dtype=torch.long, device=device)
        x["list_lengths"] = torch.ones((1, len(enc.lists)), dtype=torch.long, device=device)
    return x


def _bags(x: dict[str, torch.Tensor], offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat item slots shifted per feature, bag offsets): one bag per row and list feature."""
    lengths = x["list_lengths"]  # (rows, list features)
    shift = torch.repeat_interleave(offsets.expand_as(lengths).reshape(-1), lengths.reshape(-1))
    starts = torch.zeros(lengths.numel(), dtype=torch.long, device=lengths.device)
    starts[1:] = torch.cumsum(lengths.reshape(-1), 0)[:-1]
    return x["list_items"] + shift, starts


class WideHead(nn.Module):
    """One additive term per feature and head output, added to the heads' logits; starts at zero."""

    def __init__(self, enc: Encoders, n_out: int):
        super().__init__()
        self.enc = enc
        self.numeric = _quietly(PiecewiseLinearEncoding, _bins(enc)) if enc.numeric else None
        bins = self.numeric.impl.get_max_n_bins() if self.numeric is not None else 0
        self.numeric_weight = nn.Parameter(torch.zeros(len(enc.numeric), bins + 1, n_out))  # last: null
        _value_tables(self, enc, n_out)
        nn.init.zeros_(self.categories.weight)
        nn.init.zeros_(self.items.weight)

    def terms(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """(rows, structured features, outputs): each feature's term, in token order."""
        parts = []
        if self.numeric is not None:
            v = x["numeric"].float()
            null = torch.isnan(v)
            impl = self.numeric.impl
            ple = impl(torch.nan_to_num(v)) * (~null)[..., None]
            encoded = torch.cat([ple, null[..., None].float()], -1).to(self.numeric_weight.dtype)
            parts.append(torch.einsum("rnb,nbo->rno", encoded, self.numeric_weight))
        if len(self.category_offsets):
            parts.append(self.categories(x["categorical"] + self.category_offsets))
        if len(self.item_offsets):
            per_bag = self.items(*_bags(x, self.item_offsets))
            parts.append(per_bag.view(len(x["list_lengths"]), -1, per_bag.shape[1]))
        if not parts:  # text features only
            return self.categories.weight.new_zeros(len(x["text_ids"]), 0, self.categories.embedding_dim)
        return torch.cat(parts, 1)

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.terms(x).sum(1)


def to_tensors(cols: dict[str, Any] | pa.Table, rows: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """Encoded rows (an Arrow table from `encode`, or Ray Data's numpy batch of it) -> the tensors
    FeatureEmbedder and WideHead read; `rows` picks and orders a subset. Text is right-padded to
    the longest row of the batch, with `text_mask`. Pass a one-chunk table when picking many
    subsets of it (`combine_chunks`): the rows are taken in Arrow, so a call costs the rows it
    picks, not the table's length."""
    if isinstance(cols, pa.Table):
        table = cols.select([name for name in cols.column_names if name in INPUT_KEYS])
        if rows is not None:
            table, rows = table.take(pa.array(rows, pa.int64())), None
        cols = {name: table.column(name) for name in table.column_names}
    out: dict[str, torch.Tensor] = {}
    for key in ("numeric", "categorical", "list_lengths"):
        if key in cols:
            m = _matrix(cols[key])
            m = m if rows is None else m[rows]
            # a writable copy where Arrow's memory is read-only (torch tensors may be written)
            out[key] = torch.from_numpy(np.require(m, np.float32 if key == "numeric" else np.int64, ("C", "W")))
    for key in ("list_items", "text_ids", "text_field"):
        if key in cols:
            seqs = _sequences(cols[key])
            seqs = seqs if rows is None else [seqs[i] for i in rows]
            if key == "list_items":
                out[key] = torch.from_numpy(np.concatenate(seqs).astype(np.int64) if seqs else np.zeros(0, np.int64))
            else:
                padded, mask = pad(seqs, 0 if key == "text_ids" else -1)
                out[key] = padded
                out["text_mask"] = mask
    return out


def _matrix(col) -> np.ndarray:
    if isinstance(col, (pa.ChunkedArray, pa.Array)):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        return col.values.to_numpy(zero_copy_only=False).reshape(len(col), -1)
    col = np.asarray(col)
    return np.stack(col) if col.dtype == object else col


def _sequences(col) -> list[np.ndarray]:
    """list<int> column -> one numpy array per row, without a Python loop over values."""
    if isinstance(col, (pa.ChunkedArray, pa.Array)):
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        offsets = col.offsets.to_numpy()
        values = col.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
        return np.split(values, offsets[1:-1] - offsets[0]) if len(col) else []
    return [np.asarray(x) for x in col]


def pad(seqs: list[np.ndarray], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad a batch of int arrays to its own longest row; (padded, mask)."""
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    width = int(lengths.max()) if len(lengths) else 0
    out = np.full((len(seqs), width), value, dtype=np.int64)
    mask = np.arange(width)[None, :] < lengths[:, None]
    if width:
        out[mask] = np.concatenate(seqs)
    return torch.from_numpy(out), torch.from_numpy(mask.astype(np.int64))


def text_lengths(cols: dict[str, Any] | pa.Table) -> np.ndarray:
    """Tokens of text per row (zero without text features): micro-batches are formed by it."""
    col = cols.column("text_ids") if isinstance(cols, pa.Table) and "text_ids" in cols.column_names else \
        (cols.get("text_ids") if isinstance(cols, dict) else None)
    if col is None:
        n = cols.num_rows if isinstance(cols, pa.Table) else len(next(iter(cols.values())))
        return np.zeros(n, dtype=np.int64)
    if isinstance(col, (pa.ChunkedArray, pa.Array)):
        return pc.list_value_length(col).to_numpy(zero_copy_only=False).astype(np.int64)
    return np.fromiter((len(x) for x in col), dtype=np.int64, count=len(col))

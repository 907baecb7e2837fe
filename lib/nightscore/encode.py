"""Rows -> model input: one token per structured feature, then the free-text tokens.

The one place a row becomes model input, for training, scoring and evaluation alike. Spelled-out
numbers are a weak channel for a language model and cost tokens, so structured features enter the
backbone as one embedding each (built in `model.features` from what is encoded here):

- numeric: standardised with training mean and sd, clipped to the training range, NaN for null
  (piecewise-linear embeddings over training-quantile bin edges, Gorishniy et al. 2022);
- categorical and boolean: an index into the feature's training vocabulary
  (0 null, 1 a value unseen in training, 2.. the values, most frequent first);
- list: item indices into the feature's training vocabulary (0 null, 1 empty, 2 unseen, 3.. items);
- text: scrubbed of e-mail addresses, phone numbers and ID-like digit runs, then tokenised as
  "Label: text" within the feature's `max_tokens`.

The encoders are fitted on training rows only and stored in the model directory (`encoders.json`),
so a model's input is defined by its own directory, never by the run's config. Values the
encoders have not seen (new categories, numbers beyond the training range, text cut at its
budget) are handled and counted, never crashed on. Domain code: no torch, no Ray.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import FeatureSpec, ModelSpec, SchemaSpec
from .schema import feature_type, model_features

FORMAT = 2  # model-input format a model directory records; 1 was spelled-out text
ENCODERS_FILE = "encoders.json"
NULL, UNSEEN, CATEGORY_FIRST = 0, 1, 2  # category slots; values from CATEGORY_FIRST on
LIST_NULL, LIST_EMPTY, LIST_UNSEEN, ITEM_FIRST = 0, 1, 2, 3  # list-item slots; items from ITEM_FIRST on
STRUCTURED = ("numeric", "categorical", "boolean", "list")

# RE2 patterns, applied in this order.
_SCRUB = [
    (r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}", "[email]"),
    (r"\+?\(?\d[\d ().\-]{6,}\d", "[phone]"),
    (r"\b[A-Za-z]{0,3}\d{5,}[A-Za-z]?\b", "[id]"),
]


def scrub(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Remove e-mail addresses, phone numbers and ID-like digit runs from free text."""
    out = texts
    for pattern, token in _SCRUB:
        out = pc.replace_substring_regex(out, pattern=pattern, replacement=token)
    return out


@dataclass
class Numeric:
    name: str
    mean: float
    sd: float
    low: float  # training range, standardised
    high: float
    edges: list[float]  # piecewise-linear bin edges, standardised


@dataclass
class Vocab:
    name: str
    values: list[str]


@dataclass
class Text:
    name: str
    label: str
    max_tokens: int
    max_chars: int | None


@dataclass
class Encoders:
    """Everything fitted that turns a row into model input; stored as `encoders.json`."""

    fields: list[str]  # model features in configured order: the index reason codes report by
    labels: dict[str, list[int]]  # each feature's label as backbone tokens (its identity embedding starts there)
    numeric: list[Numeric]
    categorical: list[Vocab]  # categorical and boolean features
    lists: list[Vocab]
    text: list[Text]
    start_ids: list[int]  # e.g. [CLS]
    sep_ids: list[int]  # e.g. [SEP]: closes the feature tokens, and the text
    pad_id: int
    format: int = FORMAT

    @property
    def structured(self) -> list[str]:
        """Structured features in token order: numeric, categorical, list."""
        return [e.name for e in (*self.numeric, *self.categorical, *self.lists)]

    @property
    def fixed_tokens(self) -> int:
        """Tokens every row has before its text: start, one per structured feature, separator."""
        return len(self.start_ids) + len(self.structured) + len(self.sep_ids)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Encoders":
        d = json.loads(text)
        return cls(fields=d["fields"], labels=d["labels"], numeric=[Numeric(**x) for x in d["numeric"]],
                   categorical=[Vocab(**x) for x in d["categorical"]], lists=[Vocab(**x) for x in d["lists"]],
                   text=[Text(**x) for x in d["text"]], start_ids=d["start_ids"], sep_ids=d["sep_ids"],
                   pad_id=d["pad_id"], format=d["format"])


@dataclass
class Counts:
    """Per feature: values unseen in training, numbers beyond the training range, text cut short."""

    unseen: dict[str, int] = field(default_factory=dict)
    out_of_range: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)

    def add(self, other: "Counts") -> "Counts":
        for mine, theirs in ((self.unseen, other.unseen), (self.out_of_range, other.out_of_range),
                             (self.truncated, other.truncated)):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        return self

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {k: {n: v for n, v in d.items() if v} for k, d in dataclasses.asdict(self).items()}

    def summary(self) -> str:
        """One log line's worth: which features had what (no values, only counts)."""
        parts = [f"{kind.replace('_', ' ')}: " + ", ".join(f"{n} {v}" for n, v in sorted(d.items()))
                 for kind, d in self.as_dict().items() if d]
        return "; ".join(parts)


# --------------------------------------------------------------------------- fit
def _floats(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _fit_numeric(name: str, x: np.ndarray, n_bins: int) -> Numeric:
    import torch
    from rtdl_num_embeddings import compute_bins

    x = x[np.isfinite(x)]
    mean = float(x.mean()) if len(x) else 0.0
    sd = float(x.std()) if len(x) > 1 and x.std() > 0 else 1.0
    z = (x - mean) / sd
    distinct = np.unique(z)
    if len(distinct) < 2:  # constant or empty in training: a single unit bin
        return Numeric(name, mean, sd, -1.0, 1.0, [-1.0, 1.0])
    bins = max(2, min(n_bins, len(distinct), len(z) - 1))
    with warnings.catch_warnings():  # a feature with few distinct values gets one bin: valid, said once by the model
        warnings.filterwarnings("ignore", message=".*two bin edges.*")
        edges = compute_bins(torch.as_tensor(z[:, None], dtype=torch.float32), n_bins=bins)[0].tolist()
    if len(edges) < 2:
        edges = [float(distinct[0]), float(distinct[-1])]
    return Numeric(name, mean, sd, float(z.min()), float(z.max()), edges)


def _fit_vocab(name: str, values: pa.Array | pa.ChunkedArray, limit: int) -> Vocab:
    counts = pc.value_counts(pc.drop_null(values)).to_pylist()
    ranked = sorted(((c["counts"], str(c["values"])) for c in counts), key=lambda t: (-t[0], t[1]))
    return Vocab(name, [v for _, v in ranked[:limit]])


def _tokens(tokenizer, text: str) -> list[int]:
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    backend.no_truncation()
    return backend.encode(text, add_special_tokens=False).ids


def special_ids(tokenizer_dir: str) -> tuple[list[int], list[int], int]:
    """(start, separator, padding) token ids of a backbone: [CLS]/[SEP] for BERT-style encoders,
    BOS/EOS for decoders, none where the tokenizer names none."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, trust_remote_code=False)
    start = tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id
    sep = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
    return ([start] if start is not None else []), ([sep] if sep is not None else []), tok.pad_token_id or 0


def fit(table: pa.Table, schema: SchemaSpec, spec: ModelSpec, tokenizer, tokenizer_dir: str) -> Encoders:
    """Fit every encoder on training rows (valid rows only; validation rows must not be among them)."""
    feats = model_features(schema)
    numeric, categorical, lists, text = [], [], [], []
    for f in feats:
        col = pc.cast(table.column(f.name), feature_type(f))
        if f.kind == "numeric":
            numeric.append(_fit_numeric(f.name, _floats(col), spec.numeric_bins))
        elif f.kind == "boolean":
            categorical.append(Vocab(f.name, ["false", "true"]))
        elif f.kind == "categorical":
            categorical.append(_fit_vocab(f.name, col, spec.max_categories))
        elif f.kind == "list":
            lists.append(_fit_vocab(f.name, pc.list_flatten(col), spec.max_categories))
        else:
            text.append(Text(f.name, f.label, f.max_tokens, f.max_chars))
    start, sep, pad = special_ids(tokenizer_dir)
    return Encoders(fields=[f.name for f in feats], labels={f.name: _tokens(tokenizer, f.label) for f in feats},
                    numeric=numeric, categorical=categorical, lists=lists, text=text,
                    start_ids=start, sep_ids=sep, pad_id=pad)


# --------------------------------------------------------------------------- encode
def _fixed(values: np.ndarray, dtype) -> pa.FixedSizeListArray:
    rows, width = values.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1).astype(dtype)), width)


def _list_array(rows: list[list[int]], dtype) -> pa.ListArray:
    lengths = np.fromiter((len(x) for x in rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=dtype, count=int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _index(values: pa.Array | pa.ChunkedArray, vocab: Vocab, first: int, unseen: int) -> tuple[np.ndarray, int]:
    """Vocabulary slots for values (null -> -1 here, resolved by the caller) and how many were unseen."""
    found = pc.index_in(values, value_set=pa.array(vocab.values, pa.string()))
    idx = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    present = pc.is_valid(values).to_numpy(zero_copy_only=False)
    new = present & (idx < 0)
    out = np.where(idx >= 0, idx + first, np.where(new, unseen, -1))
    return out, int(new.sum())


def encode(table: pa.Table, enc: Encoders, schema: SchemaSpec, tokenizer) -> tuple[pa.Table, Counts]:
    """Model input for every row of `table` (valid rows, cast to the model's schema), and the counts
    of what the encoders had not seen. Columns: `numeric` (standardised floats, NaN for null),
    `categorical` (vocabulary slots), `list_items` + `list_lengths` (each list feature's item slots,
    one after the other), `text_ids` + `text_field` (text tokens and the feature each came from;
    -1 for separators), `text_cut` (per text feature: 1 where it was cut at its budget)."""
    by_name: dict[str, FeatureSpec] = {f.name: f for f in schema.features}
    n, counts, cols = table.num_rows, Counts(), {}
    if enc.numeric:
        z = np.empty((n, len(enc.numeric)), dtype=np.float32)
        for j, e in enumerate(enc.numeric):
            x = (_floats(table.column(e.name)) - e.mean) / e.sd
            beyond = np.isfinite(x) & ((x < e.low) | (x > e.high))
            counts.out_of_range[e.name] = int(beyond.sum())
            z[:, j] = np.clip(x, e.low, e.high)
        cols["numeric"] = _fixed(z, np.float32)
    if enc.categorical:
        idx = np.empty((n, len(enc.categorical)), dtype=np.int32)
        for j, v in enumerate(enc.categorical):
            values = pc.cast(pc.cast(table.column(v.name), feature_type(by_name[v.name])), pa.string())
            slots, counts.unseen[v.name] = _index(values, v, CATEGORY_FIRST, UNSEEN)
            idx[:, j] = np.where(slots < 0, NULL, slots)
        cols["categorical"] = _fixed(idx, np.int32)
    if enc.lists:
        per_feature, lengths = [], np.empty((n, len(enc.lists)), dtype=np.int32)
        for j, v in enumerate(enc.lists):
            col = table.column(v.name)
            col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
            flat = pc.list_flatten(col)
            slots, counts.unseen[v.name] = _index(flat, v, ITEM_FIRST, LIST_UNSEEN)
            slots = np.where(slots < 0, LIST_UNSEEN, slots)  # a null item inside a list: unknown
            size = pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False)
            parents = np.split(slots, np.cumsum(np.maximum(size, 0))[:-1]) if n else []
            per_feature.append([p.tolist() if s > 0 else [LIST_EMPTY if s == 0 else LIST_NULL]
                                for p, s in zip(parents, size)])
            lengths[:, j] = [max(int(s), 1) for s in size]
        cols["list_items"] = _list_array([list(itertools.chain(*row)) for row in zip(*per_feature)], np.int32)
        cols["list_lengths"] = _fixed(lengths, np.int32)
    if enc.text:
        ids, fields, cut = _text(table, enc, tokenizer)
        cols["text_ids"], cols["text_field"], cols["text_cut"] = ids, fields, _fixed(cut, np.int8)
        counts.truncated.update({t.name: int(c) for t, c in zip(enc.text, cut.sum(0))})
    return pa.table(cols), counts


def _text(table: pa.Table, enc: Encoders, tokenizer) -> tuple[pa.ListArray, pa.ListArray, np.ndarray]:
    """Each text feature as "Label: text" tokens within its budget, one after another, then the
    separator; the feature index of every token beside it; and (rows, text features) whether the
    feature's text was cut at its budget."""
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    backend.no_truncation()
    backend.no_padding()
    per_feature, cut = [], np.zeros((table.num_rows, len(enc.text)), dtype=bool)
    for j, t in enumerate(enc.text):
        text = scrub(pc.utf8_trim_whitespace(pc.cast(table.column(t.name), pa.string())))
        if t.max_chars is not None:
            text = pc.utf8_slice_codeunits(text, 0, t.max_chars)
        text = pc.if_else(pc.equal(pc.utf8_length(pc.fill_null(text, "")), 0), "none", text)
        texts = pc.binary_join_element_wise(f"{t.label}: ", text, "").to_pylist()
        ids = [e.ids for e in backend.encode_batch_fast(texts, add_special_tokens=False)]
        cut[:, j] = [len(x) > t.max_tokens for x in ids]
        per_feature.append([x[:t.max_tokens] for x in ids])
    field_of = {name: i for i, name in enumerate(enc.fields)}
    rows, fields = [], []
    for parts in zip(*per_feature):
        rows.append(list(itertools.chain(*parts, enc.sep_ids)))
        fields.append(list(itertools.chain(*([field_of[t.name]] * len(p) for t, p in zip(enc.text, parts)),
                                           [-1] * len(enc.sep_ids))))
    return _list_array(rows, np.int32), _list_array(fields, np.int16), cut


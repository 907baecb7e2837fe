"""In-process inference: one loaded model, length-bucketed batches, calibrated outputs.

Used by the Ray inference actor, by the evaluation job and by the benchmark's raw
in-process baseline, so all three measure and compute the same thing. Which device, dtype and
kernels it runs is execution's decision.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
import pyarrow as pa
import torch

from ..model import calibration
from ..model.features import null_inputs, text_lengths, to_tensors
from ..model.store import LoadedModel
from . import execution
from .execution import autocast
from .kernels import attention
from .kernels import compiled  # noqa: F401  (bench/bench_mfu.py imports it from here)
from .torch_private import onednn_ready  # noqa: F401  (bench/bench_score.py imports it from here)


@dataclass
class Predictions:
    pd: np.ndarray | None  # calibrated PD, or None for a product-only model
    propensity: np.ndarray | None  # (rows, model products), or None for a default-only model
    explained: np.ndarray | None = None  # bool per row: attributions computed
    contrib: np.ndarray | None = None  # (rows, fields): how much each field raised the default logit


class Predictor:
    """One model copy scoring encoded rows; how it runs (device, dtype, kernels) is execution's choice."""

    def __init__(self, loaded: LoadedModel, device: str | None = None, precision: str = "auto",
                 micro_batch: int = 32, threads: int | None = None, gpus: int = 1, onednn: bool = True,
                 compile: bool | Literal["cached"] = False, compiled_cache: str | None = None):
        self.device = execution.choose_device(device)
        self.settings = execution.configure_process(self.device, threads, compile)
        self.loaded = loaded
        self.model = execution.place(loaded.model, self.device, gpus)
        self.model.requires_grad_(False)  # inference: attributions differentiate the inputs only
        self.micro_batch = micro_batch
        self.precision = precision
        self.onednn = onednn
        self.compile = compile
        self.compiled_cache = compiled_cache
        self.dtype: torch.dtype | None = None
        self.encode: Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]] = self.model.encode
        self.grad_attention = execution.gradient_attention(self.device)
        self._ready = False

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Feature tokens (eager: a few embedding lookups), then backbone and heads through
        `self.encode` (compiled where chosen), then the wide terms."""
        embeds, mask = self.model.embed(x)
        return self.model.add_wide(self.encode(embeds.float(), mask), x)

    def _prepare(self, sample: dict[str, torch.Tensor]) -> None:
        """On the first call: execution picks the dtype (it may time both) and the kernels."""
        if self._ready:
            return
        path = execution.choose_path(self.loaded, self.model, self.device, sample, precision=self.precision,
                                     compile=self.compile, onednn=self.onednn, micro_batch=self.micro_batch,
                                     compiled_cache=self.compiled_cache, settings=self.settings)
        self.dtype, self.encode, self._ready = path.dtype, path.encode, True

    def _batches(self, lengths: np.ndarray):
        """Row indices in micro-batches of similar text length (less padding, same results)."""
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(lengths), self.micro_batch):
            yield order[start:start + self.micro_batch]

    def _tensors(self, inputs: pa.Table, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device) for k, v in to_tensors(inputs, rows).items()}

    def predict(self, inputs: pa.Table, explain: Callable[[np.ndarray], np.ndarray] | None = None) -> Predictions:
        """Calibrated PD and product propensities for every encoded row (`encode.encode`).

        With `explain` (calibrated PDs -> rows to explain), the rows it picks also get per-feature
        attributions of the default logit (see _attributions): a second, eager forward and one
        backward pass over those rows alone.
        """
        inputs = inputs.combine_chunks()  # each micro-batch is taken from it: one chunk keeps that cheap
        n = inputs.num_rows
        meta = self.loaded.meta
        n_fields = len(self.loaded.encoders.fields)
        logits = np.zeros(n, dtype=np.float64) if meta["default_head"] else None
        props = np.zeros((n, len(meta["product_ids"])), dtype=np.float32) if meta["product_ids"] else None
        explained = np.zeros(n, dtype=bool) if explain is not None and logits is not None else None
        contrib = np.zeros((n, n_fields), dtype=np.float32) if explained is not None else None
        for rows in self._batches(text_lengths(inputs)):
            x = self._tensors(inputs, rows)
            self._prepare(x)
            with torch.no_grad(), autocast(self.device, self.dtype):
                out = self.forward(x)
            if props is not None:
                props[rows] = torch.sigmoid(out["product_logits"].float()).cpu().numpy()
            if logits is None:
                continue
            logits[rows] = out["default_logit"].float().cpu().numpy()
            if explained is None:
                continue
            flag = np.asarray(explain(calibration.apply(meta["calibration"], logits[rows])), dtype=bool)
            if flag.any():
                picked = rows[flag]
                contrib[picked] = self._attributions(self._tensors(inputs, picked), n_fields)
                explained[picked] = True
        pd = calibration.apply(meta["calibration"], logits) if logits is not None else None
        return Predictions(pd=pd, propensity=props, explained=explained, contrib=contrib)

    def _attributions(self, x: dict[str, torch.Tensor], n_fields: int) -> np.ndarray:
        """(rows, features): how much each feature raises the default logit against its null value.

        A structured feature's token: gradient x (its embedding - its null embedding), plus its wide
        term against the null's; a text feature: gradient x input summed over its tokens.
        """
        model = self.model
        switch = attention(model.backbone.config, self.grad_attention) if self.grad_attention else nullcontext()
        with torch.enable_grad(), autocast(self.device, self.dtype), switch:
            embeds, mask = model.embed(x)
            e = embeds.detach().float().requires_grad_(True)
            model.encode(e, mask)["default_logit"].float().sum().backward()
        fields = model.features.token_fields(x).to(self.device)
        with torch.no_grad():
            base = torch.zeros_like(e)
            enc = model.features.enc
            first = len(enc.start_ids)
            base[:, first:first + len(enc.structured)] = model.features.null_tokens().float()
            per_token = (e.grad * (e.detach() - base)).sum(-1) * mask
            per_field = torch.zeros(len(e), n_fields + 1, device=self.device)
            per_field.scatter_add_(1, fields + 1, per_token)  # slot 0: start, separators, padding
            out = per_field[:, 1:]
            if model.wide is not None:  # column 0 of its terms is the default logit's
                terms = model.wide.terms(x)[..., 0] - model.wide.terms(null_inputs(enc, self.device))[..., 0]
                index = torch.tensor([enc.fields.index(f) for f in enc.structured], device=self.device)
                out = out.index_add(1, index, terms.float())
        return out.cpu().numpy()

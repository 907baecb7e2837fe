"""The inference actor: a verified model copy in a Ray Data actor pool, turning validated rows into
finished score rows. Its own module, so the actor processes import what scoring needs and not
the driver's modules (the challenger's plots among them: ~0.5 s of CPU per actor).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import Config
from ..model import store
from ..suitability import load_catalog


class ScoringActor:
    """Holds one verified model copy; turns token batches into finished score rows."""

    def __init__(self, model_uri: str, cfg: dict[str, Any], run_id: str, compile: bool | str,
                 kill_after_batches: int | None = None, fail_marker: str | None = None, progress: Any = None):
        started = time.perf_counter()
        from .inference import Predictor  # its creation makes the process's settings (execution.configure_process)

        self.cfg = Config.model_validate(cfg)
        s = self.cfg.score
        loaded = store.load(model_uri, self.cfg.storage.s3)
        self.predictor = Predictor(loaded, precision=s.precision, micro_batch=s.micro_batch,
                                   threads=s.torch_threads or max(1, int(s.cpus_per_actor)),
                                   device=None if s.gpus_per_actor > 0 else "cpu",  # None: a GPU if Ray gave one
                                   gpus=max(1, int(s.gpus_per_actor)), onednn=s.onednn, compile=compile,
                                   compiled_cache=s.compiled_cache)
        self.model_cfg = loaded.config
        self.version = loaded.version
        self.catalog = load_catalog(self.cfg.products.catalog, self.cfg.storage.s3)
        self.product_index = np.array([loaded.meta["product_ids"].index(p) for p in self.catalog.ids], dtype=np.int64) \
            if loaded.meta["product_ids"] else np.zeros(0, dtype=np.int64)
        self.run_id = run_id
        self.kill_after_batches, self.fail_marker = kill_after_batches, fail_marker
        self.progress = progress
        self.batches = 0
        # which kernels it runs is said once, by the "model path" line on its first batch
        print(f"[score] actor ready in {time.perf_counter() - started:.1f} s (model {self.version})", flush=True)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from .outputs import explain_mask, reasons_for, scores_table

        self._fault_drill()
        # gradients (and the activations they keep) only when reason codes are asked for
        explain = (lambda pd: explain_mask(pd, self.cfg)) if self.cfg.scorecard.reason_codes else None
        preds = self.predictor.predict(batch, explain=explain)
        reasons = reasons_for(preds, self.model_cfg, self.cfg, batch.num_rows)
        if self.progress is not None:
            self.progress.add.remote(batch.num_rows)  # fire and forget: one small call per batch
        return scores_table(batch, cfg=self.cfg, catalog=self.catalog, product_index=self.product_index,
                            pd=preds.pd, propensity=preds.propensity, reasons=reasons,
                            model_version=self.version, run_id=self.run_id)

    def _fault_drill(self) -> None:
        """The kill_actor_after_batches drill (see drills): this actor process dies once, to prove restarts work."""
        self.batches += 1
        after = self.kill_after_batches
        if after is not None and self.batches > after and self.fail_marker and not Path(self.fail_marker).exists():
            Path(self.fail_marker).write_text("inference actor killed by fault drill\n")
            os._exit(1)

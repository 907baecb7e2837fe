"""Feature tokens + backbone + two heads: a default-probability logit and product-propensity logits.

Either head may be absent when the data set has only that one label. Encoders are
mean- or CLS-pooled; decoder backbones are pooled on the last real token. The wide path
(model.wide) adds its per-feature terms to the heads' logits.
"""
from __future__ import annotations

import math

import contextlib

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel

from ..encode import Encoders
from .features import FeatureEmbedder, WideHead


class CreditModel(nn.Module):
    def __init__(self, backbone: PreTrainedModel, pooling: str, n_products: int, default_head: bool,
                 encoders: Encoders, wide: bool):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        hidden = backbone.config.hidden_size
        words = backbone.get_input_embeddings()
        with _gathered(words.weight):  # under ZeRO-3 the backbone's weights are partitioned as they load
            self.features = FeatureEmbedder(encoders, words)
        self.default_head = nn.Linear(hidden, 1) if default_head else None
        self.product_head = nn.Linear(hidden, n_products) if n_products else None
        self.wide = WideHead(encoders, int(default_head) + n_products) if wide else None

    @classmethod
    def build(cls, backbone_dir: str, pooling: str, n_products: int, default_head: bool, encoders: Encoders,
              wide: bool, pretrained: bool = True) -> "CreditModel":
        """From a local HF directory (safetensors only, never remote code)."""
        if pretrained:
            backbone = AutoModel.from_pretrained(backbone_dir, trust_remote_code=False, use_safetensors=True)
        else:
            backbone = AutoModel.from_config(AutoConfig.from_pretrained(backbone_dir, trust_remote_code=False))
        return cls(backbone, pooling, n_products, default_head, encoders, wide)

    def init_priors(self, default_rate: float | None, product_rates: list[float] | None) -> None:
        """Start each head's bias at the log-odds of its label's base rate.

        Take-up and default are rare (1-5 %); from a zero bias the first few hundred
        optimizer steps only walk the biases down, and each product's walks at the same
        pace, so the ranking across products starts out wrong and learns slowly.
        """
        def logit(rate: float) -> float:
            rate = min(max(rate, 1e-4), 1 - 1e-4)
            return math.log(rate / (1 - rate))

        with torch.no_grad():
            if self.default_head is not None and default_rate is not None:
                self.default_head.bias.fill_(logit(default_rate))
            if self.product_head is not None and product_rates is not None:
                self.product_head.bias.copy_(torch.tensor([logit(r) for r in product_rates]))

    def device_map(self, n_devices: int) -> dict[str, int]:
        """Module name -> device index: the transformer blocks in contiguous, even runs over
        n devices, what runs before them (embeddings) with the first run, what runs after
        (final norm, pooler, heads) with the last. For a model too large for one GPU."""
        path, blocks = block_list(self.backbone)
        placed: dict[str, int] = {}
        module: nn.Module = self.backbone
        prefix = "backbone"
        for step in path:  # siblings along the way: before the blocks -> first device, after -> last
            names = [name for name, _ in module.named_children()]
            for name in names:
                if name != step:
                    placed[f"{prefix}.{name}"] = 0 if names.index(name) < names.index(step) else n_devices - 1
            module, prefix = getattr(module, step), f"{prefix}.{step}"
        for i in range(len(blocks)):
            placed[f"{prefix}.{i}"] = i * n_devices // len(blocks)
        for head in ("default_head", "product_head"):
            if getattr(self, head) is not None:
                placed[head] = n_devices - 1
        placed["features"] = 0  # feature embeddings feed the first block; the wide terms join the heads there
        if self.wide is not None:
            placed["wide"] = 0
        return placed

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = mask.to(hidden.device)  # the last block may sit on another device than the input
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            last = mask.sum(dim=1).clamp(min=1) - 1  # right padding: last real token
            return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)

    def forward(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encoded rows (features.to_tensors) -> head logits."""
        return self.add_wide(self.encode(*self.embed(x)), x)

    def embed(self, x: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input embeddings, attention mask): feature tokens, then text tokens."""
        return self.features(x, self.backbone.get_input_embeddings())

    def encode(self, embeds: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Backbone and heads on input embeddings: the part scoring compiles."""
        out = self.backbone(inputs_embeds=embeds, attention_mask=attention_mask)
        return self.heads(out.last_hidden_state, attention_mask)

    def add_wide(self, out: dict[str, torch.Tensor], x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The heads' logits plus the wide path's per-feature terms (column 0 default, then products)."""
        if self.wide is None:
            return out
        with torch.autocast(next(iter(out.values())).device.type, enabled=False):
            terms = self.wide(x)
        out = dict(out)
        first = 0
        if "default_logit" in out:
            out["default_logit"] = out["default_logit"] + terms[:, 0].to(out["default_logit"])
            first = 1
        if "product_logits" in out:
            out["product_logits"] = out["product_logits"] + terms[:, first:].to(out["product_logits"])
        return out

    def heads(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooling in fp32 and the heads in their weights' precision, outside any autocast.

        Under bf16 autocast a head would round its logit to bf16: near -2.5 that is steps of
        1/64, so calibrated PDs clumped on a few values and an unchanged population read as
        drifted (score PSI 0.87 on the demo's first day). The backbone keeps its fast precision.
        """
        result: dict[str, torch.Tensor] = {}
        with torch.autocast(hidden.device.type, enabled=False):
            pooled = self.pool(hidden.float(), attention_mask)
            if self.default_head is not None:
                result["default_logit"] = self.default_head(pooled.to(self.default_head.weight.dtype)).squeeze(-1)
            if self.product_head is not None:
                result["product_logits"] = self.product_head(pooled.to(self.product_head.weight.dtype))
        return result


def block_list(backbone: nn.Module) -> tuple[list[str], nn.ModuleList]:
    """The backbone's stack of transformer blocks (its largest ModuleList) and the path to it."""
    lists = [(name, m) for name, m in backbone.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(backbone).__name__} has no stack of blocks to spread over devices")
    name, blocks = max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    return name.split("."), blocks


def _gathered(weight: torch.Tensor):
    """The whole weight while inside, where ZeRO-3 holds only this rank's partition of it."""
    if not hasattr(weight, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)

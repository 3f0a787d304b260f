"""Activation range observers for int8 calibration: min-max, percentile and MSE search.

An observer sees every calibration batch of one layer input. It keeps the running min / max and a
bounded random sample of values, from which the percentile and MSE methods choose a clipping range.
The range becomes an affine int8 quantizer (scale, zero point) over [-128, 127].
"""

from __future__ import annotations

import torch

from ...errors import InputError

OBSERVERS = ("minmax", "percentile", "mse")
QMIN, QMAX = -128, 127


def affine_params(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point of an int8 affine quantizer whose grid covers [lo, hi] (and 0 exactly)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (QMAX - QMIN), 1e-8)
    zero = int(round(QMIN - lo / scale))
    return scale, max(QMIN, min(QMAX, zero))


def fake_quant_error(values: torch.Tensor, lo: float, hi: float) -> float:
    scale, zero = affine_params(lo, hi)
    q = torch.fake_quantize_per_tensor_affine(values, scale, zero, QMIN, QMAX)
    return float((q - values).pow(2).mean())


class RangeObserver:
    """Collects the statistics of one tensor stream; ``range(method)`` returns the chosen (lo, hi)."""

    def __init__(self, sample_size: int = 1 << 16, seed: int = 0) -> None:
        self.lo, self.hi = float("inf"), float("-inf")
        self.sample_size = sample_size
        self.samples: list[torch.Tensor] = []
        self.generator = torch.Generator().manual_seed(seed)
        self.batches = 0

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float().flatten()
        if x.numel() == 0:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        take = min(x.numel(), self.sample_size)
        idx = torch.randint(0, x.numel(), (take,), generator=self.generator, device="cpu").to(x.device)
        self.samples.append(x[idx].cpu())
        self.batches += 1

    def _values(self) -> torch.Tensor:
        values = torch.cat(self.samples)
        if values.numel() > 8 * self.sample_size:
            keep = torch.randperm(values.numel(), generator=self.generator)[: 8 * self.sample_size]
            values = values[keep]
        return values

    def range(self, method: str = "minmax", percentile: float = 99.99) -> tuple[float, float]:
        if not self.batches:
            raise InputError("this layer saw no calibration data: the calibration images never reached it.")
        if method == "minmax":
            return self.lo, self.hi
        values = self._values()
        if method == "percentile":
            q = torch.tensor([(100 - percentile) / 100, percentile / 100])
            lo, hi = torch.quantile(values, q).tolist()
            return lo, hi
        if method == "mse":
            # shrink the min-max range step by step; keep the clipping with the least quantization error
            best, best_err = (self.lo, self.hi), fake_quant_error(values, self.lo, self.hi)
            for frac in torch.linspace(0.2, 0.98, 40).tolist():
                lo, hi = self.lo * frac, self.hi * frac
                err = fake_quant_error(values, lo, hi)
                if err < best_err:
                    best, best_err = (lo, hi), err
            return best
        raise InputError(f"unknown observer {method!r}; choose from {', '.join(OBSERVERS)}.")

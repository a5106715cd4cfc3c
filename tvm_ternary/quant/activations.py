"""Activation quantizers: float activations -> integer levels, with a straight-through
estimator (STE) for quantization-aware training.

Every quantizer here is a monotone step function. Its **inference semantics** are
thresholds: ``level(x) = lo + step * #{j : x >= thresholds[j]}`` (float32 compares, no
rounding), and the level stands for the float value ``level * scale``. Defining them by
thresholds makes PyTorch, Relax and the fused TVM kernels agree bit for bit: compares are
exact, and the rewrite folds them into integer thresholds on the previous layer's int32
accumulator.

In training (``module.train()``) ``forward`` returns the fake-quantized value
``level * scale`` whose gradient passes straight through inside the clipping range and
reaches the learned scales (LSQ-style).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..schemes import PER_TOKEN_LEVELS, PER_TOKEN_MIN_ABSMAX


def _sample(x: Tensor, size: int = 1 << 16) -> Tensor:
    """A deterministic subsample of ``x`` (flattened, float32) for calibration."""
    flat = x.detach().flatten().float()
    return flat[:: max(1, flat.numel() // size)]


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` forward, identity gradient."""
    return x + (torch.round(x) - x).detach()


class ActivationQuantizer(nn.Module):
    """Base: levels ``lo, lo + step, ..., hi``; subclasses define thresholds and the STE path."""

    lo: int
    step: int
    hi: int

    @property
    def num_levels(self) -> int:
        return (self.hi - self.lo) // self.step + 1

    def thresholds(self) -> Tensor:
        """Ascending float32 decision thresholds, ``num_levels - 1`` of them."""
        raise NotImplementedError

    def scale(self) -> Tensor:
        """Float value of one level unit (a 0-d tensor)."""
        raise NotImplementedError

    def levels(self, x: Tensor) -> Tensor:
        """Inference semantics: integer levels (float32 tensor), see the module docstring."""
        return self.lo + self.step * torch.bucketize(x, self.thresholds().detach().to(x.dtype),
                                                     right=True).to(x.dtype)

    def fake(self, x: Tensor) -> Tensor:
        """Training semantics: differentiable ``level * scale``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantized activations (``level * scale``): STE in training, thresholds in eval."""
        return self.fake(x) if self.training else self.levels(x) * self.scale().detach()

    def calibrate(self, x: Tensor) -> None:
        """Post-training: set the scales from a sample of this quantizer's input."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"levels={self.lo}..{self.hi} step {self.step}"


class UniformQuantizer(ActivationQuantizer):
    """Uniform levels ``lo..hi`` (step 1) with one learned scale: unsigned ``bits``-bit
    (``lo = 0``, ``hi = 2^bits - 1``) or ternary ``{-1, 0, 1}`` (``lo = -1``, ``hi = 1``).
    Thresholds sit half-way between levels: ``(i + 0.5) * scale``."""

    def __init__(self, lo: int, hi: int):
        super().__init__()
        self.lo, self.step, self.hi = lo, 1, hi
        self.log_scale = nn.Parameter(torch.zeros(()))

    @classmethod
    def unsigned(cls, bits: int) -> "UniformQuantizer":
        return cls(0, (1 << bits) - 1)

    @classmethod
    def ternary(cls) -> "UniformQuantizer":
        return cls(-1, 1)

    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def thresholds(self) -> Tensor:
        return (torch.arange(self.lo, self.hi, dtype=torch.float32) + 0.5) * self.scale()

    def fake(self, x: Tensor) -> Tensor:
        s = self.scale()
        return round_ste(torch.clamp(x / s, self.lo, self.hi)) * s

    def calibrate(self, x: Tensor) -> None:
        """The scale of least squared error on the sample, searched up to the 99.9th
        percentile of ``|x|`` at the top level."""
        sample = _sample(x)
        top = torch.quantile(sample.abs(), 0.999).clamp(min=1e-8)
        candidates = top * torch.linspace(0.02, 1.0, 50) / self.hi
        errors = [float(((torch.clamp(torch.round(sample / s), self.lo, self.hi) * s - sample) ** 2).mean())
                  for s in candidates]
        with torch.no_grad():
            self.log_scale.fill_(torch.log(candidates[int(np.argmin(errors))]))


class BipolarQuantizer(ActivationQuantizer):
    """Odd levels ``-(2^bits - 1) .. 2^bits - 1`` (step 2; 1 bit is BNN's sign ``{-1, +1}``)
    with a learned scale and a learned offset ``center`` that moves the decision points:
    ``level(x)`` is the odd level nearest to ``(x - center) / scale``; it stands for
    ``level * scale``."""

    def __init__(self, bits: int):
        super().__init__()
        top = (1 << bits) - 1
        self.lo, self.step, self.hi = -top, 2, top
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.center = nn.Parameter(torch.zeros(()))

    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def thresholds(self) -> Tensor:
        between = torch.arange(self.lo + 1, self.hi, 2, dtype=torch.float32)   # -top+1 .. top-1
        return self.center + between * self.scale()

    def fake(self, x: Tensor) -> Tensor:
        s = self.scale()
        u = torch.clamp((x - self.center) / s, self.lo, self.hi)
        odd = 2 * torch.floor(u / 2) + 1                        # nearest odd level
        return (u + (torch.clamp(odd, self.lo, self.hi) - u).detach()) * s

    def calibrate(self, x: Tensor) -> None:
        """Center at the mean (a median would sit on a data value, often a ReLU's zero, and
        make every level equal); scale: mean distance from it (1 bit) or its 99.9th
        percentile at the top level."""
        sample = _sample(x)
        center = sample.mean()
        spread = (sample - center).abs()
        scale = spread.mean() if self.hi == 1 else torch.quantile(spread, 0.999) / self.hi
        with torch.no_grad():
            self.center.fill_(center)
            self.log_scale.fill_(torch.log(torch.clamp(scale, min=1e-8)))


class FatnnQuantizer(ActivationQuantizer):
    """FATNN's activation quantizer: levels ``{0, 1, 2}`` from two clamped-and-rounded
    terms with learned step sizes ``s1``, ``s2``:

        training:  s1 * round(clamp(x / s1, 0, 1)) + s2 * round(clamp((x - s1) / s2, 0, 1))

    so the float levels ``0, s1, s1 + s2`` and the thresholds ``s1 / 2`` and ``s1 + s2 / 2``
    are non-uniform. The inference kernel multiplies integer levels, so deployment keeps
    the learned (non-uniform) thresholds and gives the levels ``{0, 1, 2}`` the mean step
    ``(s1 + s2) / 2`` as scale.
    """

    def __init__(self):
        super().__init__()
        self.lo, self.step, self.hi = 0, 1, 2
        self.log_steps = nn.Parameter(torch.zeros(2))

    def steps(self) -> tuple[Tensor, Tensor]:
        s = self.log_steps.exp()
        return s[0], s[1]

    def scale(self) -> Tensor:
        s1, s2 = self.steps()
        return (s1 + s2) / 2

    def thresholds(self) -> Tensor:
        s1, s2 = self.steps()
        return torch.stack([s1 / 2, s1 + s2 / 2]).float()

    def fake(self, x: Tensor) -> Tensor:
        s1, s2 = self.steps()
        return s1 * round_ste(torch.clamp(x / s1, 0, 1)) + s2 * round_ste(torch.clamp((x - s1) / s2, 0, 1))

    def calibrate(self, x: Tensor) -> None:
        """Grid search of ``(s1, s2)`` for the least squared error on the sample."""
        sample = _sample(x)
        top = torch.quantile(sample, 0.999).clamp(min=1e-8)
        grid = top * torch.linspace(0.1, 1.0, 19)
        best, best_err = (top / 2, top / 2), float("inf")
        for s1 in grid:
            for s2 in grid:
                q = s1 * torch.round(torch.clamp(sample / s1, 0, 1)) + \
                    s2 * torch.round(torch.clamp((sample - s1) / s2, 0, 1))
                err = float(((q - sample) ** 2).mean())
                if err < best_err:
                    best, best_err = (s1, s2), err
        with torch.no_grad():
            self.log_steps.copy_(torch.log(torch.stack(best)))


def per_token_absmax(x: Tensor) -> Tensor:
    """Each row's (last axis) largest magnitude, at least 1e-5, keeping the axis."""
    return x.abs().amax(dim=-1, keepdim=True).clamp(min=PER_TOKEN_MIN_ABSMAX)


def per_token_scale(x: Tensor) -> Tensor:
    """Each row's ``127 / absmax`` as PyTorch's scalar-by-tensor division computes it: the
    reciprocal, then times 127 (written out, so the kernels can match it bit for bit)."""
    return per_token_absmax(x).reciprocal() * PER_TOKEN_LEVELS


def per_token_levels(x: Tensor) -> Tensor:
    """``clip(round(x * per_token_scale(x)), -127, 127)`` per row, in float32 (round half to even)."""
    return torch.round(x * per_token_scale(x)).clamp(-PER_TOKEN_LEVELS, PER_TOKEN_LEVELS)


def per_token_step(x: Tensor) -> Tensor:
    """Each row's level step ``absmax / 127`` (shape ``[..., 1]``)."""
    return per_token_absmax(x) / PER_TOKEN_LEVELS


class PerTokenQuantizer(nn.Module):
    """BitNet b1.58's activations: each row (a token: the last axis) quantized to the 8-bit
    levels ``-127..127`` with its own step ``absmax / 127``, computed at run time, so there
    is nothing to calibrate or learn. Inference: :func:`per_token_levels` times
    :func:`per_token_step`; training: the same with a straight-through rounding.
    The ``ternary_int8`` kernel quantizes the float rows itself (``activations="per_token"``)."""

    lo, step, hi = -PER_TOKEN_LEVELS, 1, PER_TOKEN_LEVELS
    num_levels = 2 * PER_TOKEN_LEVELS + 1

    def scale(self) -> Tensor:
        """1: the step is per row (:func:`per_token_step`), not a static scale."""
        return torch.ones(())

    def thresholds(self) -> Tensor:
        """None to speak of: the levels depend on each row's absmax (an empty tensor)."""
        return torch.zeros(0)

    def levels(self, x: Tensor) -> Tensor:
        """Inference semantics: each row's integer levels (float32 tensor), :func:`per_token_levels`."""
        return per_token_levels(x)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return per_token_levels(x) * per_token_step(x)
        scaled = torch.clamp(x * per_token_scale(x), -PER_TOKEN_LEVELS, PER_TOKEN_LEVELS)
        return round_ste(scaled) * per_token_step(x)

    def calibrate(self, x: Tensor) -> None:
        """Nothing to fit: every row's step comes from that row at run time."""

    def extra_repr(self) -> str:
        return f"per token, levels={self.lo}..{self.hi}"

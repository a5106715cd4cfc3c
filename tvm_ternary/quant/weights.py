"""Weight quantizers: float weights -> integer weights and a per-output-channel scale.

Each quantizer is an ``nn.Module`` whose ``forward(w)`` is the fake-quantized weight
``w_int * scale`` with a straight-through gradient (for quantization-aware training), and
whose :meth:`WeightQuantizer.quantize` returns ``(w_int, scale)`` for deployment:
``w_int`` holds integers (float32 tensor, the layer's shape) and ``scale`` has one entry
per output channel (axis 0). Statistics are per output channel.

- :class:`TWN`: threshold ``0.7 * mean|w|``, scale = mean of the kept ``|w|``.
- :class:`TNT`: the ternary vector of highest cosine similarity to ``w`` (keep the ``n``
  largest ``|w|``, ``n`` chosen by one sort), scale = mean of the kept ``|w|``.
- :class:`FatnnWeights`: learned asymmetric thresholds ``w > d_pos -> 1``, ``w < -d_neg -> -1``.
- :class:`Bipolar`: odd levels ``±1, ±3, ...`` of ``bits`` bits (1 bit: BNN's sign).
- :class:`Unipolar`: ``0 .. 2^bits - 1`` (negative weights clip to 0).
- :class:`Symmetric`: ``-(2^(bits-1) - 1) .. 2^(bits-1) - 1``, rounded, scale ``max|w| / top``
  (8 bits: the int8 first and last layers, as PyTorch's per-channel symmetric int8 weights).
- :class:`AbsMean`: BitNet b1.58's ternary weights, ``clip(round(w / mean|w|), -1, 1)`` with
  the mean over the whole tensor as the scale of every channel.
- :class:`FGQ`: ternary in groups of ``group_size`` input channels at each kernel tap,
  one scale per group; deployed as ``w_int = t * m`` with small integer multipliers
  ``m`` (``0..FGQ_MULTIPLIER_MAX``) of the channel scale, so inference stays integer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..schemes import FGQ_MULTIPLIER_MAX, FGQ_ROW, is_group_size


def _per_channel(w: Tensor) -> Tensor:
    return w.reshape(w.shape[0], -1)


def _channel_view(v: Tensor, w: Tensor) -> Tensor:
    return v.reshape(-1, *([1] * (w.dim() - 1)))


def _kept_mean(absw: Tensor, keep: Tensor) -> Tensor:
    """Mean of ``absw`` where ``keep``, per row (0 where nothing is kept)."""
    return (absw * keep).sum(1) / keep.sum(1).clamp(min=1)


class WeightQuantizer(nn.Module):
    """Base: subclasses implement :meth:`quantize`; ``forward`` adds the STE."""

    def quantize(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``(w_int, scale)``: integer weights (float32) and per-output-channel scales."""
        raise NotImplementedError

    def forward(self, w: Tensor) -> Tensor:
        w_int, scale = self.quantize(w)
        fake = w_int * _channel_view(scale, w)
        return w + (fake - w).detach()


class TWN(WeightQuantizer):
    """Ternary weight networks: ``|w| > 0.7 mean|w|`` keeps the sign."""

    def quantize(self, w):
        rows = _per_channel(w.detach())
        absw = rows.abs()
        keep = (absw > 0.7 * absw.mean(1, keepdim=True)).float()
        return (torch.sign(rows) * keep).reshape(w.shape), _kept_mean(absw, keep)


class AbsMean(WeightQuantizer):
    """BitNet b1.58: ``gamma = mean|w|`` over the tensor, ``w_int = clip(round(w / gamma), -1, 1)``,
    ``gamma`` the scale of every output channel."""

    def quantize(self, w):
        gamma = w.detach().abs().mean().clamp(min=1e-8)
        return torch.clamp(torch.round(w.detach() / gamma), -1, 1), gamma.expand(w.shape[0]).clone()


class TNT(WeightQuantizer):
    """Ternarization by maximal cosine similarity, O(N log N) per channel: with the ``|w|``
    sorted descending, keeping the top ``n`` gives cosine ``cumsum_n / (sqrt(n) ||w||)``."""

    def quantize(self, w):
        rows = _per_channel(w.detach())
        absw = rows.abs()
        ordered, order = absw.sort(1, descending=True)
        n = torch.arange(1, rows.shape[1] + 1, dtype=rows.dtype)
        best = (ordered.cumsum(1) / n.sqrt()).argmax(1)                  # ||w|| is common to a row
        keep = torch.zeros_like(rows).scatter_(1, order, (n[None, :] <= best[:, None] + 1).to(rows.dtype))
        return (torch.sign(rows) * keep).reshape(w.shape), _kept_mean(absw, keep)


class FatnnWeights(WeightQuantizer):
    """FATNN weights: per-channel learned thresholds ``d_pos``, ``d_neg`` (initialised to
    0.7 times the mean positive / negative weight); their gradient comes from a
    hard-sigmoid surrogate of the step, the weights' from the STE."""

    def __init__(self, out_channels: int):
        super().__init__()
        self.d_pos = nn.Parameter(torch.zeros(out_channels))
        self.d_neg = nn.Parameter(torch.zeros(out_channels))
        self.initialised = False

    def init_thresholds(self, w: Tensor) -> None:
        rows = _per_channel(w.detach())
        pos, neg = rows.clamp(min=0), (-rows).clamp(min=0)
        with torch.no_grad():
            self.d_pos.copy_(0.7 * pos.sum(1) / (pos > 0).sum(1).clamp(min=1))
            self.d_neg.copy_(0.7 * neg.sum(1) / (neg > 0).sum(1).clamp(min=1))
        self.initialised = True

    def _steps(self, w: Tensor) -> tuple[Tensor, Tensor]:
        if not self.initialised:
            self.init_thresholds(w)
        rows = _per_channel(w)
        hard = (rows > self.d_pos[:, None]).float() - (rows < -self.d_neg[:, None]).float()
        return rows, hard

    def quantize(self, w):
        rows, hard = self._steps(w.detach())
        return hard.reshape(w.shape), _kept_mean(rows.abs(), hard.abs())

    def forward(self, w):
        rows, hard = self._steps(w)
        width = (self.d_pos + self.d_neg)[:, None].detach().clamp(min=1e-8) / 4
        soft = torch.clamp((rows - self.d_pos[:, None]) / width + 0.5, 0, 1) - \
            torch.clamp((-rows - self.d_neg[:, None]) / width + 0.5, 0, 1)
        scale = _kept_mean(rows.abs().detach(), hard.abs())[:, None]
        # value hard * scale; gradient: identity to w (STE) plus the surrogate's slope
        out = rows + (hard * scale - rows).detach() + (soft - soft.detach()) * scale
        return out.reshape(w.shape)


class Bipolar(WeightQuantizer):
    """Odd levels of ``bits`` bits, ``-(2^bits - 1) .. 2^bits - 1``; scale ``max|w| / top``
    (1 bit: BNN's ``sign(w)``, zero to +1, scale ``mean|w|``)."""

    def __init__(self, bits: int):
        super().__init__()
        self.top = (1 << bits) - 1

    def quantize(self, w):
        rows = _per_channel(w.detach())
        if self.top == 1:
            return torch.where(rows >= 0, 1.0, -1.0).reshape(w.shape), rows.abs().mean(1)
        scale = (rows.abs().amax(1) / self.top).clamp(min=1e-12)
        u = torch.clamp(rows / scale[:, None], -self.top, self.top)
        levels = torch.clamp(2 * torch.floor(u / 2) + 1, -self.top, self.top)
        return levels.reshape(w.shape), scale


class Unipolar(WeightQuantizer):
    """Unsigned levels ``0 .. 2^bits - 1``, scale ``max(w) / top`` (negative weights clip to 0)."""

    def __init__(self, bits: int):
        super().__init__()
        self.top = (1 << bits) - 1

    def quantize(self, w):
        rows = _per_channel(w.detach())
        scale = (rows.amax(1).clamp(min=0) / self.top).clamp(min=1e-12)
        return torch.clamp(torch.round(rows / scale[:, None]), 0, self.top).reshape(w.shape), scale


class Symmetric(WeightQuantizer):
    """Signed levels ``-top .. top`` with ``top = 2^(bits-1) - 1``, rounded to nearest,
    scale ``max|w| / top`` per output channel."""

    def __init__(self, bits: int):
        super().__init__()
        self.top = (1 << (bits - 1)) - 1

    def quantize(self, w):
        rows = _per_channel(w.detach())
        scale = (rows.abs().amax(1) / self.top).clamp(min=1e-12)
        return torch.clamp(torch.round(rows / scale[:, None]), -self.top, self.top).reshape(w.shape), scale


class FGQ(WeightQuantizer):
    """Fine-grained ternary: groups of ``group_size`` consecutive input channels (axis 1)
    at each kernel tap, TWN within a group; ``group_size="row"``: one group per output
    channel, all its inputs (BitNet b1.58's per-channel scale). :meth:`group_scales` gives
    the float group scales; :meth:`quantize` deploys them as ``m * channel_scale`` (see
    module docstring)."""

    def __init__(self, group_size: int | str):
        super().__init__()
        if not is_group_size(group_size):
            raise ValueError(f"FGQ: group_size must be an int >= 1 or {FGQ_ROW!r}, got {group_size!r}")
        self.group_size = group_size

    def _groups(self, w: Tensor) -> Tensor:
        """``[K, groups, G, taps]`` view, zero-padded along the input channels (for "row",
        ``[K, 1, C * taps, 1]``)."""
        k, c = w.shape[:2]
        taps = w[0, 0].numel()
        if self.group_size == FGQ_ROW:
            return w.detach().reshape(k, 1, c * taps, 1)
        groups = -(-c // self.group_size)
        padded = torch.zeros(k, groups * self.group_size, taps, dtype=w.dtype)
        padded[:, :c] = w.detach().reshape(k, c, taps)
        return padded.reshape(k, groups, self.group_size, taps)

    def group_scales(self, w: Tensor) -> tuple[Tensor, Tensor]:
        """``(t, s)``: ternary ``t`` ``[K, groups, G, taps]`` and float scales ``[K, groups, taps]``."""
        g = self._groups(w)
        absw = g.abs()
        count = (absw != 0).sum(2, keepdim=True).clamp(min=1)
        keep = (absw > 0.7 * absw.sum(2, keepdim=True) / count).float()
        scale = (absw * keep).sum(2) / keep.sum(2).clamp(min=1)
        return torch.sign(g) * keep, scale

    def quantize(self, w):
        t, s = self.group_scales(w)
        channel = (s.reshape(s.shape[0], -1).amax(1) / FGQ_MULTIPLIER_MAX).clamp(min=1e-12)
        m = torch.round(s / channel[:, None, None]).clamp(0, FGQ_MULTIPLIER_MAX)
        k, c = w.shape[:2]
        w_int = (t * m[:, :, None, :]).reshape(k, -1, t.shape[-1])
        if self.group_size != FGQ_ROW:
            w_int = w_int[:, :c]                      # drop the zero padding of the last group
        return w_int.reshape(w.shape), channel

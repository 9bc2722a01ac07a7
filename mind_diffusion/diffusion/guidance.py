"""Classifier-free guidance (Ho & Salimans), as a numpy ``model_fn`` wrapper and as THE
guided-step cell every family compiles (:class:`GuidedModel`).

Both variants run the network ONCE on a doubled batch, then combine::

    out = uncond + scale * (cond - uncond)

The doubled conditioning is ``[uncond; cond]`` by default (the Wukong-Huahua / LDM order) or
``[cond; uncond]`` with ``cond_first=True`` (Taichu-GLIDE's order). With a learned variance
(``2C`` output channels, GLIDE) pass ``eps_channels=C``: guidance is applied to the first ``C``
channels and the variance channels are taken from the conditional half. A negative prompt is
simply the unconditional half's conditioning.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import numpy as np
import mindspore as ms
from mindspore import nn, ops

__all__ = ["classifier_free_guidance", "guidance_combine", "GuidedModel", "UnguidedModel"]


def _check_scale(scale) -> float:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not np.isfinite(scale):
        raise ValueError(f"guidance scale must be a finite real number, got {scale!r}")
    return float(scale)


def _check_eps_channels(eps_channels) -> Optional[int]:
    if eps_channels is None:
        return None
    if isinstance(eps_channels, bool) or not isinstance(eps_channels, numbers.Integral) \
            or eps_channels < 1:
        raise ValueError(f"eps_channels must be a positive int or None, got {eps_channels!r}")
    return int(eps_channels)


def guidance_combine(out, scale: float, eps_channels: Optional[int] = None,
                     cond_first: bool = False) -> np.ndarray:
    """Combine a doubled-batch output (numpy; ``[uncond; cond]``, or ``[cond; uncond]`` with
    ``cond_first``) into the guided prediction of the half batch."""
    out = np.asarray(out)
    if out.shape[0] % 2:
        order = "[cond; uncond]" if cond_first else "[uncond; cond]"
        raise ValueError(
            f"classifier-free guidance expects an even batch {order}, got {out.shape[0]}"
        )
    half = out.shape[0] // 2
    uncond, cond = out[:half], out[half:]
    if cond_first:
        uncond, cond = cond, uncond
    if eps_channels is None:
        return uncond + scale * (cond - uncond)
    if out.ndim < 2 or out.shape[1] <= eps_channels:
        raise ValueError(
            f"eps_channels={eps_channels} needs more than {eps_channels} channels on axis 1, "
            f"got model output shape {out.shape}"
        )
    eps_u, eps_c = uncond[:, :eps_channels], cond[:, :eps_channels]
    guided = eps_u + scale * (eps_c - eps_u)
    return np.concatenate([guided, cond[:, eps_channels:]], axis=1)


def classifier_free_guidance(model: Callable, scale: float, cond_in, *,
                             eps_channels: Optional[int] = None,
                             cond_first: bool = False) -> Callable:
    """Wrap ``model(x, t, cond)`` into a guided sampler ``model_fn(x, t)``.

    Args:
        model: callable ``model(x_in, t_in, cond_in)`` on the doubled batch returning a numpy
            array (or anything ``np.asarray`` accepts).
        scale: guidance scale (1.0 = plain conditional model, 0.0 = unconditional).
        cond_in: conditioning for the doubled batch, unconditional half FIRST (conditional
            first with ``cond_first``), passed through unchanged on every call.
        eps_channels: with a learned-variance output of ``2C`` channels, the number ``C`` of
            leading channels to guide; the rest come from the conditional half.

    Returns:
        ``model_fn(x, t)`` with ``x`` of shape ``(B, ...)`` and ``t`` of shape ``(B,)``.
    """
    scale = _check_scale(scale)
    eps_channels = _check_eps_channels(eps_channels)
    if not callable(model):
        raise ValueError(f"model must be callable as model(x, t, cond), got {type(model)!r}")

    def model_fn(x, t):
        x = np.asarray(x)
        t = np.asarray(t)
        x_in = np.concatenate([x, x], axis=0)
        t_in = np.concatenate([t, t], axis=0)
        out = np.asarray(model(x_in, t_in, cond_in))
        if out.shape[0] != x_in.shape[0]:
            raise ValueError(
                f"model returned a batch of {out.shape[0]} for a doubled input batch of "
                f"{x_in.shape[0]}"
            )
        return guidance_combine(out, scale, eps_channels, cond_first)

    return model_fn


class GuidedModel(nn.Cell):
    """In-graph classifier-free guidance around ``network(x, t, *cond)``: the one guided-step
    cell of every family (LDM's UNet with its text context, GLIDE's base UNet with tokens and
    mask).

    ``construct(x, t, [scale,] *cond_in)`` tiles ``x`` and ``t`` to a doubled batch, calls the
    network once with the doubled conditioning ``cond_in`` (one or more tensors; unconditional
    half first, or conditional first with ``cond_first``) and returns, in float32,
    ``uncond + scale * (cond - uncond)`` (on the first ``eps_channels`` channels, the
    conditional half's other channels appended). With ``scale=None`` the scale is an input
    (the first after ``t``), so changing it does not recompile; a number fixes it.
    """

    def __init__(self, network: nn.Cell, scale: Optional[float] = None,
                 eps_channels: Optional[int] = None, cond_first: bool = False):
        super().__init__(auto_prefix=False)  # wrapping must not rename the network's parameters
        self.network = network
        self.scale_is_input = scale is None
        self.scale = 1.0 if scale is None else _check_scale(scale)
        self.eps_channels = _check_eps_channels(eps_channels)
        self.guide_all = self.eps_channels is None
        self.c = 0 if self.eps_channels is None else self.eps_channels
        self.cond_first = bool(cond_first)

    def construct(self, x, t, *inputs):
        if self.scale_is_input:
            return self._guided(x, t, inputs[0], *inputs[1:])
        return self._guided(x, t, self.scale, *inputs)

    def _guided(self, x, t, scale, *cond_in):
        x_in = ops.concat((x, x), 0)
        t_in = ops.concat((t, t), 0)
        out = ops.cast(self.network(x_in, t_in, *cond_in), ms.float32)
        b = x.shape[0]
        if self.cond_first:
            cond = out[:b]
            uncond = out[b:]
        else:
            uncond = out[:b]
            cond = out[b:]
        if self.guide_all:
            return uncond + scale * (cond - uncond)
        eps_u = uncond[:, :self.c]
        eps_c = cond[:, :self.c]
        guided = eps_u + scale * (eps_c - eps_u)
        return ops.concat((guided, cond[:, self.c:]), 1)


class UnguidedModel(nn.Cell):
    """``network(x, t, *cond)`` in float32: the step when guidance is off (scale exactly 1,
    where the unconditional branch is skipped, as the originals do)."""

    def __init__(self, network: nn.Cell):
        super().__init__(auto_prefix=False)  # keep the network's parameter names
        self.network = network

    def construct(self, x, t, *cond_in):
        return ops.cast(self.network(x, t, *cond_in), ms.float32)

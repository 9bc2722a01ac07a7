"""Classifier-free guidance (Ho & Salimans), as a numpy ``model_fn`` wrapper and as a cell.

Both variants run the network ONCE on a doubled batch whose first half is unconditional and
second half conditional (the Wukong-Huahua / LDM order), then combine::

    out = uncond + scale * (cond - uncond)

With a GLIDE-style learned variance (``2C`` output channels) pass ``eps_channels=C``: guidance
is applied to the first ``C`` channels and the variance channels are taken from the
conditional half.
"""
from __future__ import annotations

import numbers
from typing import Callable, Optional

import numpy as np
from mindspore import nn, ops

__all__ = ["classifier_free_guidance", "guidance_combine", "GuidedModel"]


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


def guidance_combine(out, scale: float, eps_channels: Optional[int] = None) -> np.ndarray:
    """Combine a doubled-batch output ``[uncond; cond]`` (numpy) into the guided prediction."""
    out = np.asarray(out)
    if out.shape[0] % 2:
        raise ValueError(
            f"classifier-free guidance expects an even batch [uncond; cond], got {out.shape[0]}"
        )
    half = out.shape[0] // 2
    uncond, cond = out[:half], out[half:]
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
                             eps_channels: Optional[int] = None) -> Callable:
    """Wrap ``model(x, t, cond)`` into a guided sampler ``model_fn(x, t)``.

    Args:
        model: callable ``model(x_in, t_in, cond_in)`` on the doubled batch returning a numpy
            array (or anything ``np.asarray`` accepts).
        scale: guidance scale (1.0 = plain conditional model, 0.0 = unconditional).
        cond_in: conditioning for the doubled batch, unconditional half FIRST, passed through
            unchanged on every call.
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
        return guidance_combine(out, scale, eps_channels)

    return model_fn


class GuidedModel(nn.Cell):
    """In-graph classifier-free guidance around a network ``network(x, t, cond)``.

    ``construct(x, t, cond_in)`` tiles ``x`` and ``t`` to a doubled batch, calls the network
    once with ``cond_in`` (unconditional half first) and returns
    ``uncond + scale * (cond - uncond)``, so that the network and the guidance compile into a
    single graph. ``eps_channels`` works as in :func:`classifier_free_guidance`.
    """

    def __init__(self, network: nn.Cell, scale: float, eps_channels: Optional[int] = None):
        super().__init__(auto_prefix=False)  # wrapping must not rename the network's parameters
        self.network = network
        self.scale = _check_scale(scale)
        self.eps_channels = _check_eps_channels(eps_channels)
        self.guide_all = self.eps_channels is None
        self.c = 0 if self.eps_channels is None else self.eps_channels

    def construct(self, x, t, cond_in):
        x_in = ops.concat((x, x), 0)
        t_in = ops.concat((t, t), 0)
        out = self.network(x_in, t_in, cond_in)
        b = x.shape[0]
        uncond = out[:b]
        cond = out[b:]
        if self.guide_all:
            return uncond + self.scale * (cond - uncond)
        eps_u = uncond[:, :self.c]
        eps_c = cond[:, :self.c]
        guided = eps_u + self.scale * (eps_c - eps_u)
        return ops.concat((guided, cond[:, self.c:]), 1)

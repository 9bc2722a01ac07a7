"""Training objectives as loss cells (host draws t and noise; the graph forms x_t and the loss)."""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops


class NoisePredictionLoss(nn.Cell):
    """Simple DDPM loss: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps; mean (eps_theta - eps)^2
    over all elements (abarankab's ``l2``), or mean |.| for ``l1``.

    construct(x0, y, t, noise) -> scalar loss. ``y`` is ignored for unconditional nets.
    """

    def __init__(self, net: nn.Cell, alphas_cumprod: np.ndarray, conditional: bool, loss_type: str = "l2"):
        super().__init__(auto_prefix=False)  # keep the model's parameter names unprefixed
        if loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got {loss_type!r}")
        self.net = net
        abar = np.asarray(alphas_cumprod, np.float64)
        self.sqrt_abar = Tensor(np.sqrt(abar).astype(np.float32))
        self.sqrt_1m_abar = Tensor(np.sqrt(1.0 - abar).astype(np.float32))
        self.conditional = conditional
        self.l1 = loss_type == "l1"

    def construct(self, x0, y, t, noise):
        a = ops.gather(self.sqrt_abar, t, 0).reshape(-1, 1, 1, 1)
        b = ops.gather(self.sqrt_1m_abar, t, 0).reshape(-1, 1, 1, 1)
        x_t = a * x0 + b * noise
        if self.conditional:
            eps = self.net(x_t, t, y)
        else:
            eps = self.net(x_t, t)
        diff = ops.cast(eps, ms.float32) - noise
        if self.l1:
            return ops.abs(diff).mean()
        return (diff * diff).mean()

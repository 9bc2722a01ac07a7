"""One optimisation step for any family: forward + backward of a loss cell, data-parallel
gradient averaging, (dynamic) loss scaling with overflow skip, optional global-norm clipping,
optimizer update. Compiled as a whole in graph mode.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.communication import get_group_size


_unscale = ops.MultitypeFuncGraph("unscale")
_assign = ops.MultitypeFuncGraph("assign")
_ema_update = ops.MultitypeFuncGraph("ema_update")


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(inv_scale, grad):
    return grad * ops.cast(inv_scale, grad.dtype)


@_assign.register("Tensor", "Tensor")
def _assign_param(dst, src):
    return ops.assign(dst, src)


@_ema_update.register("Number", "Tensor", "Tensor")
def _ema_param(decay, ema, param):
    return ops.assign(ema, ema * decay + param * (1.0 - decay))


class LossScaler(nn.Cell):
    """Dynamic loss scale (fp16): x``factor`` after ``window`` finite steps, /``factor`` on overflow.
    ``dynamic=False`` keeps a static scale (1.0 for fp32 training)."""

    def __init__(self, init_scale: float = 1.0, dynamic: bool = False, factor: float = 2.0, window: int = 1000):
        super().__init__()
        self.dynamic = dynamic
        self.scale = Parameter(Tensor(init_scale, ms.float32), name="scale_sense", requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="scale_good_steps", requires_grad=False)
        self.factor, self.window = factor, window

    def construct(self, finite):
        if not self.dynamic:
            return finite
        if finite:
            good = self.good_steps + 1
            if good >= self.window:
                ops.assign(self.scale, self.scale * self.factor)
                good = good * 0
            ops.assign(self.good_steps, good)
        else:
            ops.assign(self.scale, ops.maximum(self.scale / self.factor, Tensor(1.0, ms.float32)))
            ops.assign(self.good_steps, self.good_steps * 0)
        return finite


class TrainStep(nn.Cell):
    """construct(*batch) -> (loss, finite, scale). The optimizer is skipped on overflow.
    ``rng_step``: the keyed-dropout step counter (``nn.dropout.attach_dropout_keys``), incremented
    once per step, after the forward and backward passes that read it."""

    def __init__(self, loss_net: nn.Cell, optimizer: nn.Optimizer, scaler: LossScaler | None = None,
                 clip_grad_norm: float = 0.0, distributed: bool = False, rng_step: Parameter | None = None):
        super().__init__(auto_prefix=False)
        self.loss_net = loss_net
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.scaler = scaler if scaler is not None else LossScaler(1.0, dynamic=False)
        self.clip = float(clip_grad_norm or 0.0)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.reducer = nn.DistributedGradReducer(self.weights, mean=True, degree=get_group_size()) \
            if distributed else nn.Identity()
        self.distributed = distributed
        self.keyed = rng_step is not None
        if self.keyed:
            self.rng_step = rng_step

    def construct(self, *inputs):
        loss = self.loss_net(*inputs)
        scale = self.scaler.scale
        sens = ops.ones_like(loss) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.loss_net, self.weights)(*inputs, sens)
        if self.distributed:
            grads = self.reducer(grads)
        inv = 1.0 / scale
        grads = self.hyper_map(ops.partial(_unscale, inv), grads)
        finite = ms.amp.all_finite(grads)
        self.scaler(finite)
        if self.clip > 0:
            grads = ops.clip_by_global_norm(grads, self.clip)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        if self.keyed:
            loss = ops.depend(loss, ops.assign(self.rng_step, self.rng_step + 1))
        return loss, finite, scale


class EMA(nn.Cell):
    """Exponential moving average of the model parameters (abarankab / Ho recipe):
    before ``start`` steps the average is a hard copy of the live weights; after it,
    ema <- decay * ema + (1 - decay) * theta, every ``update_every`` steps."""

    def __init__(self, net: nn.Cell, decay: float = 0.9999, start: int = 2000, update_every: int = 1):
        super().__init__()
        self.params = ms.ParameterTuple(net.trainable_params())
        self.ema = ms.ParameterTuple(
            Parameter(p.data.copy(), name="ema." + p.name, requires_grad=False) for p in self.params)
        self.decay, self.start, self.update_every = float(decay), int(start), int(update_every)
        self.hyper_map = ops.HyperMap()

    def _copy(self):
        return self.hyper_map(_assign, self.ema, self.params)

    def _average(self):
        return self.hyper_map(ops.partial(_ema_update, self.decay), self.ema, self.params)

    def construct(self, copy: bool):
        if copy:
            return self._copy()
        return self._average()

    def step(self, step: int):
        """Call after the optimizer update of global step ``step`` (0-based)."""
        if step % self.update_every:
            return
        self(Tensor(step < self.start))

    def state(self) -> dict:
        return {e.name: e.asnumpy() for e in self.ema}

    def model_state(self) -> dict:
        """EMA weights under the model's own parameter names."""
        return {e.name[len("ema."):]: e.asnumpy() for e in self.ema}

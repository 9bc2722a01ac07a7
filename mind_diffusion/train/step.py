"""One optimisation step for any family: forward + backward of a loss cell, data-parallel
gradient averaging, (dynamic) loss scaling with overflow skip, optional global-norm clipping,
optimizer update. Compiled as a whole in graph mode.

Gradient accumulation (:class:`AccumulatingTrainStep`, ``train.grad_accum_steps = A > 1``): one
update runs A micro-batches through a compiled *accumulate* cell (forward + backward with the
current loss scale as sensitivity, gradients added into fp32 buffers) and then one compiled
*apply* cell (the data-parallel all-reduce, once per update; unscale by ``1 / (scale * A)``, so
the gradient is the mean over the A equal micro-batches = the gradient of the combined batch;
overflow check on the sum, so a non-finite gradient in any micro-batch skips the whole update
and moves the dynamic scale once; clipping of the accumulated gradient; optimizer; buffers
zeroed). The optimizer, its LR schedule, the EMA and the dropout step counter all advance once
per update.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.communication import get_group_size

from .. import timings


_unscale = ops.MultitypeFuncGraph("unscale")
_assign = ops.MultitypeFuncGraph("assign")
_ema_update = ops.MultitypeFuncGraph("ema_update")
_accumulate = ops.MultitypeFuncGraph("accumulate")
_zero = ops.MultitypeFuncGraph("zero")
_cast_like = ops.MultitypeFuncGraph("cast_like")
_non_finite = ops.MultitypeFuncGraph("non_finite")
_hyper_map = ops.HyperMap()


@_unscale.register("Tensor", "Tensor")
def _unscale_grad(inv_scale, grad):
    return grad * ops.cast(inv_scale, grad.dtype)


@_assign.register("Tensor", "Tensor")
def _assign_param(dst, src):
    return ops.assign(dst, src)


@_accumulate.register("Tensor", "Tensor")
def _add_grad(acc, grad):
    return ops.assign_add(acc, ops.cast(grad, acc.dtype))


@_zero.register("Tensor")
def _zero_buffer(acc):
    return ops.assign(acc, ops.zeros_like(acc))


@_cast_like.register("Tensor", "Tensor")
def _cast_grad(param, grad):
    return ops.cast(grad, param.dtype)


@_non_finite.register("Function", "Tensor")
def _count_non_finite(check, grad):
    return check(ops.cast(grad, ms.float32))


@_ema_update.register("Number", "Tensor", "Tensor")
def _ema_param(decay, ema, param):
    return ops.assign(ema, ema * decay + param * (1.0 - decay))


def grads_finite(grads, check=None):
    """Whether every gradient is finite (a scalar bool tensor). ``check`` (CPU, :func:`finite_check`):
    one kernel per gradient that reads it once, where ``ms.amp.all_finite`` on CPU writes an element-wise
    IsFinite tensor and reduces it (6-7 ns an element: 6.5% of a CIFAR-10 DDPM training step). Without
    it ``ms.amp.all_finite`` (on Ascend, the device's overflow status)."""
    if check is None:
        return ms.amp.all_finite(grads)
    # HyperMap, not a Python loop: graph mode turns a loop over the ~1,000 gradients of a full-size
    # model into nested calls past MindSpore's call-depth limit
    return ops.addn(_hyper_map(ops.partial(_non_finite, check), grads))[0] < 0.5


def finite_check():
    """The per-gradient kernel of :func:`grads_finite` on CPU, or None (other devices, or the CPU
    kernels switched off / unavailable)."""
    from .. import cpu_gemm

    return cpu_gemm.non_finite_op()


class LossScaler(nn.Cell):
    """Dynamic loss scale (fp16): x``factor`` after ``window`` finite steps, /``factor`` on overflow.
    ``dynamic=False`` keeps a static scale (1.0 for fp32 training)."""

    def __init__(self, init_scale: float = 1.0, dynamic: bool = False, factor: float = 2.0, window: int = 1000):
        super().__init__()
        self.dynamic = dynamic
        # a static scale of 1 (fp32 training): the gradients need no unscaling
        self.unit = not dynamic and float(init_scale) == 1.0
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
        self.unscale = not self.scaler.unit
        self.finite_check = finite_check()
        self.keyed = rng_step is not None
        if self.keyed:
            self.rng_step = rng_step

    def run(self, micro_batches):
        """The :class:`AccumulatingTrainStep` interface for one micro-batch per update."""
        return self(*micro_batches[0])

    def construct(self, *inputs):
        loss = self.loss_net(*inputs)
        scale = self.scaler.scale
        sens = ops.ones_like(loss) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.loss_net, self.weights)(*inputs, sens)
        if self.distributed:
            grads = self.reducer(grads)
        if self.unscale:
            grads = self.hyper_map(ops.partial(_unscale, 1.0 / scale), grads)
        finite = grads_finite(grads, self.finite_check)
        self.scaler(finite)
        if self.clip > 0:
            grads = ops.clip_by_global_norm(grads, self.clip)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        if self.keyed:
            loss = ops.depend(loss, ops.assign(self.rng_step, self.rng_step + 1))
        return loss, finite, scale


GRAD_BUFFER_PREFIX = "grad_accum."   # the accumulation buffers (zero between updates, never saved)


def check_accum_steps(value, where: str = "train.grad_accum_steps") -> int:
    """``value`` as an int >= 1, or a ValueError naming ``where``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer() \
            or int(value) < 1:
        raise ValueError(f"{where} must be an integer >= 1 (1 = no accumulation), got {value!r}")
    return int(value)


class _Accumulate(nn.Cell):
    """construct(*micro_batch) -> loss: gradients of ``loss * scale`` added into the buffers; the
    dropout micro-batch counter (when keyed) moves on after the pass that read it."""

    def __init__(self, loss_net, weights, buffers, scaler, rng_micro=None):
        super().__init__(auto_prefix=False)
        self.loss_net, self.weights, self.buffers, self.scaler = loss_net, weights, buffers, scaler
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.keyed = rng_micro is not None
        if self.keyed:
            self.rng_micro = rng_micro

    def construct(self, *inputs):
        loss = self.loss_net(*inputs)
        sens = ops.ones_like(loss) * ops.cast(self.scaler.scale, loss.dtype)
        grads = self.grad(self.loss_net, self.weights)(*inputs, sens)
        loss = ops.depend(loss, self.hyper_map(_accumulate, self.buffers, grads))
        if self.keyed:
            loss = ops.depend(loss, ops.assign(self.rng_micro, self.rng_micro + 1))
        return loss


class _Apply(nn.Cell):
    """construct() -> (finite, scale): one update from the accumulated gradients."""

    def __init__(self, optimizer, buffers, scaler, accum_steps: int, clip: float, distributed: bool,
                 rng_step=None, rng_micro=None):
        super().__init__(auto_prefix=False)
        self.optimizer, self.weights, self.buffers, self.scaler = optimizer, optimizer.parameters, buffers, scaler
        self.accum = float(accum_steps)
        self.clip = float(clip)
        self.hyper_map = ops.HyperMap()
        self.distributed = distributed
        self.reducer = nn.DistributedGradReducer(self.buffers, mean=True, degree=get_group_size()) \
            if distributed else nn.Identity()
        self.finite_check = finite_check()
        self.keyed = rng_step is not None
        if self.keyed:
            self.rng_step = rng_step
        self.has_micro = rng_micro is not None
        if self.has_micro:
            self.rng_micro = rng_micro

    def construct(self):
        scale = self.scaler.scale
        grads = self.buffers
        if self.distributed:
            grads = self.reducer(grads)
        grads = self.hyper_map(ops.partial(_unscale, 1.0 / (scale * self.accum)), grads)
        finite = grads_finite(grads, self.finite_check)
        self.scaler(finite)
        if self.clip > 0:
            grads = ops.clip_by_global_norm(grads, self.clip)
        grads = self.hyper_map(_cast_like, self.weights, grads)
        done = finite
        if finite:
            done = ops.depend(done, self.optimizer(grads))
        done = ops.depend(done, self.hyper_map(_zero, self.buffers))
        if self.keyed:
            done = ops.depend(done, ops.assign(self.rng_step, self.rng_step + 1))
        if self.has_micro:
            done = ops.depend(done, ops.assign(self.rng_micro, self.rng_micro * 0))
        return done, scale


class AccumulatingTrainStep(nn.Cell):
    """``run(micro_batches) -> (loss, finite, scale)``: one update from ``accum_steps`` equal
    micro-batches (see the module doc); ``loss`` is the mean of the micro-batch losses, i.e. the
    loss of the combined batch. ``rng_micro``: the keyed-dropout micro-batch counter
    (``nn.dropout.attach_dropout_keys(..., micro=)``), 0 at every update boundary."""

    def __init__(self, loss_net: nn.Cell, optimizer: nn.Optimizer, accum_steps: int, scaler: LossScaler | None = None,
                 clip_grad_norm: float = 0.0, distributed: bool = False, rng_step: Parameter | None = None,
                 rng_micro: Parameter | None = None):
        super().__init__(auto_prefix=False)
        self.accum_steps = check_accum_steps(accum_steps, "accum_steps")
        self.loss_net = loss_net
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.scaler = scaler if scaler is not None else LossScaler(1.0, dynamic=False)
        self.buffers = ms.ParameterTuple(
            Parameter(ops.zeros(p.shape, ms.float32), name=GRAD_BUFFER_PREFIX + p.name, requires_grad=False)
            for p in self.weights)
        self.accumulate_grads = _Accumulate(loss_net, self.weights, self.buffers, self.scaler, rng_micro)
        self.apply_update = _Apply(optimizer, self.buffers, self.scaler, self.accum_steps, clip_grad_norm,
                                   distributed, rng_step, rng_micro)

    def run(self, micro_batches):
        if len(micro_batches) != self.accum_steps:
            raise ValueError(f"expected {self.accum_steps} micro-batches, got {len(micro_batches)}")
        losses = [timings.call(self.accumulate_grads, *mb) for mb in micro_batches]
        finite, scale = timings.call(self.apply_update)
        loss = sum(float(v.asnumpy()) for v in losses) / len(losses)
        return Tensor(loss, ms.float32), finite, scale


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
        return {name: e.asnumpy() for name, e in self.model_tensors().items()}

    def model_tensors(self) -> dict:
        """The EMA Parameters themselves under the model's names (no host copy; for ``save_atomic``)."""
        return {e.name[len("ema."):]: e for e in self.ema}

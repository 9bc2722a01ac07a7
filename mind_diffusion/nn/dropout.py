"""Dropout whose masks are a pure function of (seed, training step, layer, element).

MindSpore's ``nn.Dropout`` draws from a stateful generator inside the kernel: a restarted process
starts that stream over (so a resumed run does not see the masks an uninterrupted one would), and
the multi-threaded CPU kernel draws in a thread-dependent order once a tensor is large enough
(two identical runs of ``configs/ddpm/digits16.yaml`` differed after one step).

:class:`KeyedDropout` instead hashes a counter: element ``i`` of the global batch at training step
``s`` in layer ``l`` is kept when ``h = fmix32((i * M + key(seed, l, s)) mod 2^32)``, read as a signed 32-bit
integer, is ``>= p * 2^32 - 2^31`` (``fmix32``: MurmurHash3's 32-bit finalizer; integer ops only,
so a fraction ``p`` of uniform hashes is dropped). The step comes from an int32
parameter that the training step increments in the graph (:func:`attach_dropout_keys`), saved in
training checkpoints, so

- identical runs draw identical masks, in graph and pynative mode, on any number of threads;
- a run resumed from step ``s`` draws the masks an uninterrupted run draws at ``s + 1, ...``;
- rank ``r`` of ``R`` data-parallel workers indexes its rows from ``r * local_batch``, so the
  workers together draw the masks one process draws for the global batch;
- with gradient accumulation over ``A`` micro-batches of ``b`` rows, micro-batch ``m`` of rank
  ``r`` indexes its rows from ``(r * A + m) * b`` (a second int32 counter, the micro-batch index,
  which the accumulating step increments per micro-batch and zeroes per update), so the masks are
  again those of the global batch at that step, whatever the split into workers x micro-batches.

A ``KeyedDropout`` that no trainer has keyed (a model used outside the trainers) behaves as
``nn.Dropout``; in eval mode it is the identity, like ``nn.Dropout``.
"""
from __future__ import annotations

import zlib

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

RNG_STEP_NAME = "train_rng_step"   # the step counter's parameter name (training checkpoints only)
RNG_MICRO_NAME = "train_rng_micro"  # the micro-batch counter (0 between updates, never saved)

_M1, _M2, _M3 = 0x9E3779B1, 0x85EBCA6B, 0xC2B2AE35  # golden-ratio and MurmurHash3 fmix32 constants


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def fmix32(h: int) -> int:
    """MurmurHash3's finalizer on a Python int (unsigned 32-bit result)."""
    h &= 0xFFFFFFFF
    h ^= h >> 16
    h = (h * _M2) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * _M3) & 0xFFFFFFFF
    h ^= h >> 16
    return h


def layer_key(seed: int, layer: str) -> int:
    """The per-layer base key (unsigned 32-bit) from the run seed and the layer's cell name."""
    return fmix32(fmix32(int(seed) & 0xFFFFFFFF) ^ zlib.crc32(layer.encode()))


def keep_mask_numpy(shape, p: float, seed: int, layer: str, step: int, row_offset: int = 0) -> np.ndarray:
    """The keep-mask ``KeyedDropout`` applies (reference implementation, for tests and checks)."""
    shape = tuple(int(s) for s in shape)
    per_row = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    k = fmix32((int(step) * _M1 + layer_key(seed, layer)) & 0xFFFFFFFF)
    idx = np.arange(int(np.prod(shape)), dtype=np.uint64) + np.uint64(row_offset * per_row)
    h = (idx * np.uint64(_M1) + np.uint64(k)) & np.uint64(0xFFFFFFFF)
    for shift, mult in ((16, _M2), (13, _M3)):
        h ^= h >> np.uint64(shift)
        h = (h * np.uint64(mult)) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(16)
    signed = h.astype(np.int64) - (h >= np.uint64(2**31)).astype(np.int64) * 2**32
    return (signed >= round(float(p) * 2**32) - 2**31).reshape(shape)


class KeyedDropout(nn.Cell):
    """Drop-in for ``nn.Dropout(p=p)`` with (seed, step)-keyed masks once a trainer keys it."""

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= float(p) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = float(p)
        self.scale = 1.0 / (1.0 - self.p)
        # keep when the hash, read as a signed int32, is >= p * 2^32 - 2^31 (a fraction 1 - p)
        self.threshold = int(round(self.p * 2**32)) - 2**31
        self.plain = nn.Dropout(p=self.p) if self.p > 0 else nn.Identity()
        self.keyed = False
        self.base = 0
        self.rank = 0
        self.accum = 1
        self.rshift = ops.RightShift()

    def _lsr(self, h, s: int):
        """Logical right shift of an int32 tensor (RightShift is arithmetic on signed ints)."""
        return ops.bitwise_and(self.rshift(h, ops.fill(ms.int32, h.shape, s)),
                               ops.fill(ms.int32, h.shape, (1 << (32 - s)) - 1))

    def _fmix(self, h):
        h = ops.bitwise_xor(h, self._lsr(h, 16)) * _i32(_M2)
        h = ops.bitwise_xor(h, self._lsr(h, 13)) * _i32(_M3)
        return ops.bitwise_xor(h, self._lsr(h, 16))

    def construct(self, x):
        if not self.keyed:
            return self.plain(x)
        if not self.training:
            return x
        key = self._fmix(ops.reshape(self.rng_step, (1,)) * _i32(_M1) + _i32(self.base))
        n = 1
        for s in x.shape:
            n = n * s
        if self.accum > 1:  # micro-batch m of rank r: rows from (r * A + m) * b of the global batch
            offset = (self.rng_micro + self.rank * self.accum) * n
            idx = (ops.arange(0, n, dtype=ms.int32) + ops.reshape(offset, (1,))).reshape(x.shape)
        else:
            offset = self.rank * n  # rows of this rank start at rank * local_batch in the global batch
            idx = ops.arange(offset, offset + n, dtype=ms.int32).reshape(x.shape)
        h = self._fmix(idx * _i32(_M1) + key.reshape(()))
        keep = ops.cast(h >= self.threshold, x.dtype)
        return x * keep * ops.cast(self.scale, x.dtype)


def make_micro_counter() -> Parameter:
    """The int32 micro-batch counter of :func:`attach_dropout_keys` (``micro=``)."""
    return Parameter(Tensor(np.zeros((), np.int32)), name=RNG_MICRO_NAME, requires_grad=False)


def attach_dropout_keys(net: nn.Cell, seed: int, rank: int = 0, accum_steps: int = 1,
                        micro: Parameter | None = None) -> Parameter | None:
    """Key every :class:`KeyedDropout` under ``net`` on ``(seed, layer name, step)``: returns the
    shared int32 step parameter (the training step must increment it once per step), or None when
    ``net`` has no dropout. ``accum_steps > 1`` needs ``micro`` (:func:`make_micro_counter`), the
    micro-batch index within the update. Call before the first compile."""
    cells = [(name, c) for name, c in net.cells_and_names() if isinstance(c, KeyedDropout) and c.p > 0]
    if not cells:
        return None
    if int(accum_steps) > 1 and micro is None:
        raise ValueError("accum_steps > 1 needs the micro-batch counter (micro=make_micro_counter())")
    step = Parameter(Tensor(np.zeros((), np.int32)), name=RNG_STEP_NAME, requires_grad=False)
    for name, cell in cells:
        cell.base = layer_key(seed, name)
        cell.rank = int(rank)
        cell.rng_step = step
        cell.accum = int(accum_steps)
        if cell.accum > 1:
            cell.rng_micro = micro
        cell.keyed = True
    return step

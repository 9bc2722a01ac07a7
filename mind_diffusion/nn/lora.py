"""LoRA (low-rank adaptation) for any Dense layer and 2-D convolution: injection into a built network,
trainable-parameter selection, merge / unmerge.

A LoRA layer computes ``y = base(x) + scaling * (x A^T) B^T`` with ``A`` [rank, in] and ``B``
[out, rank], ``scaling = alpha / rank``. The parameters carry the names of the original
Wukong-Huahua LoRA training (MindPet's ``LoRADense``, formerly ``tk.delta``): ``A`` is
``<layer>.tk_delta_lora_a``, ``B`` is ``<layer>.tk_delta_lora_b``, both float32; ``A`` starts as
``HeUniform(negative_slope=sqrt(5))`` (PyTorch's kaiming-uniform default), ``B`` as zeros, so a
fresh LoRA leaves the network's output unchanged. The layers subclass ``nn.Dense`` /
``nn.Conv2d`` and keep the base ``weight`` / ``bias`` Parameters (same objects, same names), so
an official checkpoint still loads strictly into an injected network (the LoRA tensors are the
only extra names).

The LoRA branch computes in the dtype of the layer's input (fp16 on devices under the precision
policy, as MindPet), its parameters stay fp32. ``merge_lora`` folds ``scaling * B A`` into the
base weight (computed in float64, rounded once) and switches the branch off; ``unmerge_lora``
subtracts it again (the base weights come back to within one float32 rounding, <= 1e-6).

Graph mode: a compiled graph does not see cells swapped or switched after it was compiled, so
``inject_lora`` / ``remove_lora`` / ``merge_lora`` / ``unmerge_lora`` renew the compile key of
every cell under the network they change (:func:`refresh_graphs`); wrappers compiled around it
(e.g. a pipeline's guided UNet step) must be rebuilt or refreshed by their owner.
"""
from __future__ import annotations

import math
import time
from typing import Iterable, Sequence

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, initializer

from .dropout import KeyedDropout
from ..cpu_gemm import accelerate, restore

LORA_A = "tk_delta_lora_a"   # [rank, in]
LORA_B = "tk_delta_lora_b"   # [out, rank]
# the names other MindPet releases give the same tensors (read, never written)
LORA_NAME_ALIASES = {"tk_delta_lora_a": LORA_A, "tk_delta_lora_b": LORA_B,
                     "mindpet_delta_lora_a": LORA_A, "mindpet_delta_lora_b": LORA_B}

# target sets (cell-path suffixes)
UNET_ATTN_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")          # the original's LoRA
UNET_FF_TARGETS = ("ff.net.0.proj", "ff.net.2")
UNET_PROJ_TARGETS = ("proj_in", "proj_out")                         # 1x1 convs
UNET_CONV_TARGETS = ("in_layers_conv.conv", "out_layers_conv.conv")  # the ResBlocks' 3x3 convs (LoCon)
TEXT_ATTN_TARGETS = ("attn.attn.in_proj", "attn.attn.out_proj")    # fused q/k/v rows
TEXT_MLP_TARGETS = ("c_fc", "c_proj")


def check_rank_alpha(rank, alpha, what: str = "LoRA") -> tuple[int, float]:
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank <= 0:
        raise ValueError(f"{what} rank must be a positive integer (the original uses lora_rank: 4), "
                         f"got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(alpha)) or float(alpha) == 0.0:
        raise ValueError(f"{what} alpha must be a finite non-zero number (the original uses "
                         f"lora_alpha: 4), got {alpha!r}")
    return int(rank), float(alpha)


def _share_params(dst: nn.Cell, src: nn.Cell) -> nn.Cell:
    """``dst`` holds ``src``'s weight (and bias) Parameter objects."""
    dst.weight = src.weight
    if src.has_bias:
        dst.bias = src.bias
    return dst


def _lora_params(in_ch: int, out_ch: int, rank: int):
    a = Parameter(initializer(HeUniform(negative_slope=math.sqrt(5)), [rank, in_ch], ms.float32), name=LORA_A)
    b = Parameter(initializer("zeros", [out_ch, rank], ms.float32), name=LORA_B)
    return a, b


def _same_kernels(new, old):
    """``new`` with the product kernels of ``old``: wrapping a layer in LoRA (or unwrapping it) never
    switches it between MindSpore's kernels and the OpenBLAS ones (``mind_diffusion/cpu_gemm.py``), so
    a fresh LoRA leaves the output bit-identical."""
    return accelerate(new) if getattr(old, "_blas", False) else new


class LoRAMixin:
    """Shared state of the LoRA layers: rank, alpha, scaling, merged flag, delta in numpy."""

    def _init_lora(self, in_ch: int, out_ch: int, rank, alpha, dropout: float):
        self.lora_rank, self.lora_alpha = check_rank_alpha(rank, alpha)
        self.scaling = self.lora_alpha / self.lora_rank
        self.tk_delta_lora_a, self.tk_delta_lora_b = _lora_params(in_ch, out_ch, self.lora_rank)
        self.lora_dropout = KeyedDropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.lora_mm = ops.MatMul(transpose_b=True)

    def lora_delta(self) -> np.ndarray:
        """``scaling * B @ A`` in float64, shaped [out, fan_in] (fan_in = in * kh * kw for convolutions)."""
        a = self.tk_delta_lora_a.asnumpy().astype(np.float64)
        b = self.tk_delta_lora_b.asnumpy().astype(np.float64)
        return self.scaling * (b @ a)

    def _add_to_weight(self, sign: float):
        w = self.weight.asnumpy()
        delta = self.lora_delta().reshape(w.shape)
        self.weight.set_data(Tensor((w.astype(np.float64) + sign * delta).astype(w.dtype)))

    def extra_repr(self):
        return f"rank={self.lora_rank}, alpha={self.lora_alpha}, merged={self.merged}"


class LoRADense(LoRAMixin, nn.Dense):
    """``nn.Dense`` + LoRA branch (MindPet ``LoRADense`` layout). Build with
    :meth:`from_dense` to reuse an existing layer's weight and bias Parameters."""

    def __init__(self, in_channels: int, out_channels: int, rank: int = 4, alpha: float = 4,
                 has_bias: bool = True, dropout: float = 0.0):
        super().__init__(in_channels, out_channels, weight_init="zeros",
                         bias_init="zeros" if has_bias else None, has_bias=has_bias)
        self._init_lora(in_channels, out_channels, rank, alpha, dropout)

    @classmethod
    def from_dense(cls, dense: nn.Dense, rank: int, alpha: float, dropout: float = 0.0) -> "LoRADense":
        if getattr(dense, "activation_flag", False):
            raise ValueError("LoRA on a Dense layer with a fused activation is not supported")
        return _same_kernels(_share_params(cls(dense.in_channels, dense.out_channels, rank, alpha, dense.has_bias,
                                               dropout), dense), dense)

    def to_base(self) -> nn.Dense:
        """A plain ``nn.Dense`` holding this layer's weight / bias Parameters."""
        return _same_kernels(_share_params(nn.Dense(self.in_channels, self.out_channels, weight_init="zeros",
                                                    bias_init="zeros" if self.has_bias else None,
                                                    has_bias=self.has_bias), self), self)

    def construct(self, x):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]) if len(shape) != 2 else x
        dt = x2.dtype
        y = self.matmul(x2, ops.cast(self.weight, dt))
        if self.has_bias:
            y = self.bias_add(y, ops.cast(self.bias, dt))
        if not self.merged:
            h = self.lora_mm(self.lora_dropout(x2), ops.cast(self.tk_delta_lora_a, dt))
            h = self.lora_mm(h, ops.cast(self.tk_delta_lora_b, dt))
            y = y + h * ops.cast(self.scaling, dt)
        if len(shape) != 2:
            y = y.reshape(shape[:-1] + (self.out_channels,))
        return y


class LoRAConv2d(LoRAMixin, nn.Conv2d):
    """An ``nn.Conv2d`` (groups 1, any kernel, stride, padding, dilation) + LoRA branch. ``A`` is
    [rank, in * kh * kw] (the kernel flattened; for a 1x1 kernel [rank, in] as for Dense layers) and
    ``B`` [out, rank]: the branch is a ``rank``-channel convolution with the base layer's kernel size,
    stride, padding and dilation followed by a 1x1 convolution to ``out`` channels, i.e. kohya's
    LoCon layout (``lora_down`` [r, in, kh, kw], ``lora_up`` [out, r, 1, 1]). kohya files adapt
    SD-v1's ``proj_in`` / ``proj_out`` (1x1) and, with ``conv_dim``, the ResBlock 3x3 convolutions;
    ``merge`` adds ``scaling * B A`` reshaped to the kernel."""

    def __init__(self, in_channels: int, out_channels: int, rank: int = 4, alpha: float = 4,
                 has_bias: bool = True, dropout: float = 0.0, kernel_size=1, stride=1, pad_mode: str = "valid",
                 padding=0, dilation=1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, pad_mode=pad_mode,
                         padding=padding, dilation=dilation, has_bias=has_bias,
                         weight_init="zeros", bias_init="zeros" if has_bias else None)
        kh, kw = self.kernel_size
        self._init_lora(in_channels * kh * kw, out_channels, rank, alpha, dropout)
        self.pointwise = is_conv1x1(self)
        if self.pointwise:
            self.lora_bmm = ops.BatchMatMul()
        else:
            self.lora_down = ops.Conv2D(out_channel=self.lora_rank, kernel_size=self.kernel_size, mode=1,
                                        pad_mode=self.pad_mode, pad=self.padding, stride=self.stride,
                                        dilation=self.dilation, group=1)
            self.lora_up = ops.Conv2D(out_channel=out_channels, kernel_size=1, mode=1, pad_mode="valid")

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, rank: int, alpha: float, dropout: float = 0.0) -> "LoRAConv2d":
        if not is_plain_conv(conv):
            raise ValueError("LoRA on convolutions supports group 1, NCHW 2-D convolutions only")
        return _same_kernels(_share_params(cls(conv.in_channels, conv.out_channels, rank, alpha, conv.has_bias,
                                               dropout, **_conv_geometry(conv)), conv), conv)

    def to_base(self) -> nn.Conv2d:
        return _same_kernels(_share_params(nn.Conv2d(self.in_channels, self.out_channels, has_bias=self.has_bias,
                                                     weight_init="zeros", bias_init="zeros" if self.has_bias else None,
                                                     **_conv_geometry(self)), self), self)

    def construct(self, x):
        y = self.conv2d(x, ops.cast(self.weight, x.dtype))
        if self.has_bias:
            y = self.bias_add(y, ops.cast(self.bias, x.dtype))
        if not self.merged:
            dt = x.dtype
            if self.pointwise:
                b, c, h, w = x.shape
                xf = self.lora_dropout(x).reshape(b, c, h * w)
                a = ops.broadcast_to(ops.cast(self.tk_delta_lora_a, dt).reshape(1, self.lora_rank, c),
                                     (b, self.lora_rank, c))
                bb = ops.broadcast_to(ops.cast(self.tk_delta_lora_b, dt).reshape(1, self.out_channels,
                                                                                self.lora_rank),
                                      (b, self.out_channels, self.lora_rank))
                d = self.lora_bmm(bb, self.lora_bmm(a, xf)) * ops.cast(self.scaling, dt)
                y = y + d.reshape(b, self.out_channels, h, w)
            else:
                kh, kw = self.kernel_size
                a = ops.cast(self.tk_delta_lora_a, dt).reshape(self.lora_rank, self.in_channels, kh, kw)
                bb = ops.cast(self.tk_delta_lora_b, dt).reshape(self.out_channels, self.lora_rank, 1, 1)
                d = self.lora_up(self.lora_down(self.lora_dropout(x), a), bb)
                y = y + d * ops.cast(self.scaling, dt)
        return y


LORA_LAYERS = (LoRADense, LoRAConv2d)


def is_conv1x1(cell) -> bool:
    return (isinstance(cell, nn.Conv2d) and tuple(cell.kernel_size) == (1, 1)
            and tuple(cell.stride) == (1, 1) and cell.group == 1
            and tuple(getattr(cell, "dilation", (1, 1))) == (1, 1)
            and (cell.pad_mode == "valid" or not any(np.atleast_1d(cell.padding))))


def is_plain_conv(cell) -> bool:
    """A 2-D NCHW convolution without groups (what :class:`LoRAConv2d` adapts)."""
    return (isinstance(cell, nn.Conv2d) and cell.group == 1 and getattr(cell, "data_format", "NCHW") == "NCHW"
            and len(tuple(cell.kernel_size)) == 2)


def _conv_geometry(conv: nn.Conv2d) -> dict:
    return {"kernel_size": tuple(conv.kernel_size), "stride": tuple(conv.stride), "pad_mode": conv.pad_mode,
            "padding": conv.padding, "dilation": tuple(getattr(conv, "dilation", (1, 1)))}


# ------------------------------------------------------------------------ network surgery

def refresh_graphs(network: nn.Cell) -> None:
    """Give every cell under ``network`` a new compile key, so that graph mode compiles its new
    structure / flags instead of reusing a graph compiled before the change."""
    stamp = time.time_ns()
    for i, (_, cell) in enumerate(network.cells_and_names()):
        object.__setattr__(cell, "_create_time", stamp + i)


def _set_child(parent: nn.Cell, key: str, child: nn.Cell):
    if isinstance(parent, (nn.SequentialCell, nn.CellList)):
        parent[int(key)] = child
    else:
        setattr(parent, key, child)


def _replace(network: nn.Cell, path: str, new: nn.Cell, old: nn.Cell):
    """Put ``new`` at ``path`` with ``old``'s compute dtype, and give its parameters their full
    names (setattr would prefix them relative to the parent only)."""
    flags = old.get_flags()
    for key, dtype in (("fp16", ms.float16), ("bf16", ms.bfloat16), ("fp32", ms.float32)):
        if flags.get(key):  # the precision policy's compute dtype (apply_compute_dtype) carries over
            (restore(new) if dtype != ms.float32 else new).to_float(dtype)
            break
    names = {attr: p.name for attr, p in old.parameters_and_names(expand=False)}
    prefix = old.weight.name[: -len("weight")]
    parent_path, _, key = path.rpartition(".")
    parent = network if not parent_path else dict(network.cells_and_names())[parent_path]
    _set_child(parent, key, new)
    for attr, p in new.parameters_and_names(expand=False):
        p.name = names.get(attr, prefix + attr)


def _matches(path: str, targets: Sequence[str]) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)


def lora_layers(network: nn.Cell) -> dict:
    """{cell path: LoRA layer} under ``network``."""
    return {name: c for name, c in network.cells_and_names() if isinstance(c, LORA_LAYERS)}


def inject_lora(network: nn.Cell, rank: int = 4, alpha: float = 4,
                targets: Sequence[str] = UNET_ATTN_TARGETS, dropout: float = 0.0,
                paths: Iterable[str] | None = None) -> list[str]:
    """Wrap every Dense / Conv2d whose cell path ends with one of ``targets`` (or exactly the
    cells in ``paths``) in a LoRA layer of this ``rank`` and ``alpha``. Layers that already have
    LoRA are left as they are. Returns the wrapped paths; raises ``ValueError`` when nothing
    matches or a target names another kind of cell."""
    rank, alpha = check_rank_alpha(rank, alpha)
    if isinstance(targets, str):
        targets = (targets,)
    wanted = set(paths) if paths is not None else None
    found, wrapped, bad = set(), [], []
    for path, cell in list(network.cells_and_names()):
        if not path or not (path in wanted if wanted is not None else _matches(path, targets)):
            continue
        found.add(path)
        if isinstance(cell, LORA_LAYERS):
            continue
        if isinstance(cell, nn.Dense):
            new = LoRADense.from_dense(cell, rank, alpha, dropout)
        elif is_plain_conv(cell):
            new = LoRAConv2d.from_conv(cell, rank, alpha, dropout)
        else:
            bad.append(f"{path} ({type(cell).__name__})")
            continue
        _replace(network, path, new, cell)
        wrapped.append(path)
    if bad:
        raise ValueError(f"LoRA applies to Dense layers and 2-D convolutions without groups only; these "
                         f"targets are not: {', '.join(bad[:5])}")
    missing = (wanted - found) if wanted is not None else set()
    if missing:
        raise ValueError(f"no layer at {sorted(missing)[:5]} in this network")
    if not found:
        raise ValueError(f"no layer of this network matches the LoRA targets {list(targets)} "
                         f"(e.g. to_q, to_k, to_v, to_out.0 in the LDM UNet)")
    refresh_graphs(network)
    return wrapped


def remove_lora(network: nn.Cell) -> list[str]:
    """Put plain layers back (same weight / bias Parameters, so a merged LoRA stays in the
    weights: call :func:`unmerge_lora` first to drop it). Returns the paths."""
    layers = lora_layers(network)
    for path, layer in layers.items():
        _replace(network, path, layer.to_base(), layer)
    if layers:
        refresh_graphs(network)
    return list(layers)


def lora_parameters(network: nn.Cell) -> list:
    """The LoRA Parameters (A and B of every LoRA layer), in network order."""
    return [p for p in network.get_parameters() if p.name.endswith(("." + LORA_A, "." + LORA_B))]


def mark_only_lora_trainable(network: nn.Cell) -> list:
    """Freeze everything but the LoRA parameters (``requires_grad``); returns the trainable ones
    (the original's ``freeze_delta(model, 'lora')``). Raises when the network has no LoRA."""
    params = lora_parameters(network)
    if not params:
        raise ValueError("the network has no LoRA layers: inject_lora() first (model.unet.enable_lora)")
    keep = {id(p) for p in params}
    for p in network.get_parameters():
        p.requires_grad = id(p) in keep
    return params


def lora_state_dict(network: nn.Cell) -> dict:
    """{full parameter name: float32 array} of the LoRA parameters."""
    return {p.name: p.asnumpy().astype(np.float32) for p in lora_parameters(network)}


def _set_merged(network: nn.Cell, merged: bool) -> int:
    n = 0
    for layer in lora_layers(network).values():
        if layer.merged != merged:
            layer._add_to_weight(1.0 if merged else -1.0)
            layer.merged = merged
            n += 1
    if n:
        refresh_graphs(network)
    return n


def merge_lora(network: nn.Cell) -> int:
    """Fold every unmerged LoRA branch into its base weight (``W += alpha/rank * B A``) and switch
    the branch off. Returns the number of layers merged."""
    return _set_merged(network, True)


def unmerge_lora(network: nn.Cell) -> int:
    """Undo :func:`merge_lora` (``W -= alpha/rank * B A``) and switch the branches back on."""
    return _set_merged(network, False)


def lora_summary(network: nn.Cell) -> dict:
    """Counts for logs and READMEs: LoRA layers, LoRA parameters, all parameters."""
    lora = sum(int(np.prod(p.shape)) for p in lora_parameters(network))
    total = sum(int(np.prod(p.shape)) for p in network.get_parameters())
    return {"layers": len(lora_layers(network)), "lora_params": lora, "total_params": total,
            "fraction": lora / max(total, 1)}

"""Convolutions, dense layers and norms on CPU: ``aot`` Custom operators from ``gemm_cpu.cc``.

MindSpore 2.10's CPU convolution and MatMul run on its bundled oneDNN, which this package holds to
AVX2 (``_env.py``: above the cap its plain-NCHW convolution falls to a reference kernel). Measured on
the 2-core CI CPU (Intel Xeon, AVX-512): 115-180 GFLOP/s for the SD-v1 UNet's 3x3 convolutions and
100-130 for its MatMuls, against 260-300 for the OpenBLAS sgemm that numpy ships (it picks its own
AVX-512 kernels) and 315-370 for PyTorch. Most of a UNet step is convolutions and matrix products, so
on CPU the ``nn.Conv2d`` (groups 1, NCHW) and ``nn.Dense`` layers built by ``nn.layers.conv2d`` /
``dense`` (every network of the library; not the FID Inception, where it measured slower) hand their
products of at least ``MIN_WORK`` multiply-adds to that sgemm (see the ``.cc`` file for the three
convolution forms), forward and backward; GroupNorm runs as one kernel (its backward as two more, so it
trains through them), LayerNorm, the LDM UNet's GEGLU and the FID Inception's BatchNorm + ReLU as one
kernel each in inference; the training step's overflow check reads each gradient once (:func:`non_finite_op`).

How it is used: :func:`accelerate` swaps a layer's ``conv2d`` / ``matmul`` primitive for a small
cell that calls the Custom operator on large float32 products and the original primitive otherwise
(small products; fp16 / bf16 layers are restored to the primitive by :func:`restore` before
``to_float``). The layer, its Parameters and their names do not change, so checkpoints and LoRA
wrappers see the same network. It applies on the CPU device only, unless ``MIND_DIFFUSION_BLAS=off``
(also ``0``/``false``/``no``). The library is built on first use with the system C++ compiler and
linked against numpy's bundled OpenBLAS (``numpy.libs/libopenblas*.so``, found by its CBLAS symbol),
into the kernel cache of ``cpu_attention`` (``$MIND_DIFFUSION_KERNEL_CACHE``). Without a compiler or
an OpenBLAS with a CBLAS sgemm, the MindSpore kernels run and one note says why.

Convolutions through oneDNN: where the ``onednn-cpu-gomp`` and ``onednn-devel-cpu-gomp`` wheels are installed
(``requirements.txt`` on x86-64 Linux; their ``lib/libdnnl.so.3`` and ``include/oneapi/dnnl`` under the
environment's prefix, or under ``$MIND_DIFFUSION_DNNL_ROOT``), the library is built with them and every
float32 convolution of an accelerated layer, forward and backward, runs on oneDNN's own blocked-layout
kernels with the CPU's full instruction set (AVX-512 where it has it: 250-430 GFLOP/s on the CI CPU,
against 90-120 for MindSpore's convolutions, whose bundled oneDNN this package holds to AVX2). That copy of
oneDNN is loaded by its path beside MindSpore's (see the ``.cc`` file). ``MIND_DIFFUSION_DNNL=off`` (or
the wheels absent) keeps the OpenBLAS forms above; :func:`conv_backend` says which runs.

Results agree with MindSpore's kernels to float32 rounding (the sums run in another order).
"""
from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from . import cpu_attention

SOURCE = Path(__file__).with_name("gemm_cpu.cc")
ENV_SWITCH = "MIND_DIFFUSION_BLAS"
DNNL_SWITCH = "MIND_DIFFUSION_DNNL"
DNNL_ROOT_ENV = "MIND_DIFFUSION_DNNL_ROOT"
NO_DNNL = "built without oneDNN"   # MindDiffusionDnnlInfo of a library built without it
OFF_VALUES = cpu_attention.OFF_VALUES
# (symbol, integer type) in the order tried: numpy's ILP64 build, scipy's, a plain LP64 OpenBLAS
SYMBOLS = (("cblas_sgemm64_", "int64_t"), ("scipy_cblas_sgemm64_", "int64_t"), ("cblas_sgemm", "int"))
# the smallest product (multiply-adds: per image for a convolution, whole for a dense layer) handed to
# OpenBLAS. Below it MindSpore's oneDNN kernels were as fast or faster on the 2-core CI CPU (the
# digits DDPM's 16x16 convolutions at 32-64 channels, batch 64: 136 img/s with MindSpore's, 76-109 with
# OpenBLAS's image-by-image products); from the SD-v1 UNet's 8x8 level up OpenBLAS wins.
MIN_WORK = 1 << 25
# OpenBLAS x86 kernel families with AVX2 / AVX-512 sgemm kernels (openblas_get_corename, lower case)
FAST_CORES = frozenset({"haswell", "zen", "skylakex", "cooperlake", "sapphirerapids"})

_state: dict = {}


def _openblas() -> tuple[Path, str, str] | None:
    """numpy's bundled OpenBLAS (file, CBLAS sgemm symbol, integer type), or None."""
    import numpy

    root = Path(numpy.__file__).resolve().parent
    candidates = sorted(root.parent.glob("numpy.libs/libopenblas*.so*")) + sorted(root.glob(".libs/libopenblas*.so*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(str(path))
        except OSError:
            continue
        for symbol, int_type in SYMBOLS:
            if hasattr(lib, symbol):
                return path, symbol, int_type
    return None


def _slow_core(blas: Path, symbol: str) -> str | None:
    """Why the OpenBLAS loaded runs slow kernels on this CPU, or None: an AVX2 CPU on which OpenBLAS
    fell back to a family without AVX2 kernels (its table does not know the CPU model; ``_env.py``)."""
    from . import _env

    flags = _env.cpu_flags()
    if not {"avx2", "fma"} <= flags:
        return None
    try:
        get = getattr(ctypes.CDLL(str(blas)), symbol.replace("cblas_sgemm", "openblas_get_corename"))
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_char_p
    core = (get() or b"").decode(errors="replace")
    if not core or core.lower() in FAST_CORES:
        return None
    want = _env.openblas_coretype(flags)
    return (f"numpy's OpenBLAS runs its generic '{core}' kernels on this CPU (it does not know the model), "
            f"slower than MindSpore's; to use the OpenBLAS kernels set OPENBLAS_CORETYPE={want} before Python "
            f"starts (importing mind_diffusion before numpy does it)")


def onednn() -> tuple[Path, Path] | None:
    """(``libdnnl.so.3``, include folder) of an installed oneDNN 3.x (the onednn-cpu-gomp and
    onednn-devel-cpu-gomp wheels put them under the environment's prefix), or None."""
    import site

    def holds(root: str) -> tuple[Path, Path] | None:
        lib, inc = Path(root) / "lib" / "libdnnl.so.3", Path(root) / "include"
        version = inc / "oneapi" / "dnnl" / "dnnl_version.h"
        if lib.is_file() and version.is_file() and "DNNL_VERSION_MAJOR 3" in version.read_text(errors="replace"):
            return lib, inc
        return None

    named = os.environ.get(DNNL_ROOT_ENV)
    if named:
        found = holds(named)
        if found is not None:
            return found
        print(f"note: {DNNL_ROOT_ENV}={named} holds no oneDNN 3 (lib/libdnnl.so.3 and "
              f"include/oneapi/dnnl/dnnl_version.h); looking in this Python environment instead", file=sys.stderr)
    for root in (sys.prefix, sys.base_prefix, getattr(site, "USER_BASE", None)):
        found = holds(root) if root else None
        if found is not None:
            return found
    return None


def _dnnl_flags() -> tuple[list[str], list[bytes]]:
    """Compiler flags and build-key parts for the oneDNN convolutions ([] when off or not installed)."""
    if os.environ.get(DNNL_SWITCH, "").strip().lower() in OFF_VALUES:
        return [], []
    found = onednn()
    if found is None:
        return [], []
    lib, inc = found
    return ([f"-I{inc}", "-DMD_WITH_DNNL", f'-DMD_DNNL_PATH="{lib}"', "-ldl"],
            [str(lib.resolve()).encode(), str(lib.stat().st_size).encode()])


def _build() -> tuple[Path | None, str]:
    if os.environ.get(ENV_SWITCH, "").strip().lower() in OFF_VALUES:
        return None, f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
    found = _openblas()
    if found is None:
        return None, "numpy has no bundled OpenBLAS with a CBLAS sgemm to link the CPU convolution kernel against"
    blas, symbol, int_type = found
    slow = _slow_core(blas, symbol)
    if slow is not None:
        return None, slow
    dnnl_link, dnnl_ident = _dnnl_flags()
    link = [f"-DMD_CBLAS_SGEMM={symbol}", f"-DMD_BLAS_INT={int_type}", f"-L{blas.parent}", f"-l:{blas.name}",
            f"-Wl,-rpath,{blas.parent}", *dnnl_link]
    return cpu_attention.build_kernel(SOURCE, "gemm_cpu", link,
                                      [str(blas.resolve()).encode(), str(blas.stat().st_size).encode(),
                                       symbol.encode(), *dnnl_ident],
                                      "OpenBLAS CPU kernel")


def library() -> Path | None:
    """The built library, or None (:func:`unavailable_reason` says why); built once per process."""
    if "lib" not in _state:
        _state["lib"], _state["why"] = _build()
    return _state["lib"]


def unavailable_reason() -> str:
    library()
    return _state.get("why", "")


def dnnl_info() -> str:
    """"oneDNN 3.2.0 (avx512_core_amx)" when the library runs convolutions on oneDNN, else why not."""
    if "dnnl" not in _state:
        lib = library()
        if lib is None:
            _state["dnnl"] = "no CPU kernel library"
        else:
            info = ctypes.CDLL(str(lib)).MindDiffusionDnnlInfo
            info.restype = ctypes.c_char_p
            _state["dnnl"] = (info() or b"").decode(errors="replace")
    return _state["dnnl"]


def conv_backend() -> str:
    """Which kernels the accelerated convolutions built now run: "onednn", "openblas" (products of at
    least ``MIN_WORK``; smaller ones MindSpore's) or "mindspore" (not :func:`enabled`)."""
    if not enabled():
        return "mindspore"
    info = dnnl_info()
    if info.startswith("oneDNN "):
        return "onednn"
    if info != NO_DNNL and not _state.get("told_dnnl"):
        # built against a oneDNN that does not run here: say so once
        _state["told_dnnl"] = True
        print(f"note: convolutions use the OpenBLAS kernels: {info}", file=sys.stderr)
    return "openblas"


def openblas_convolutions():
    """Inside the block, layers built use the OpenBLAS convolutions (as with ``MIND_DIFFUSION_DNNL=off``);
    afterwards the switch and the built state are as before (tests and benches comparing the two)."""
    return cpu_attention.switched_off(_state, DNNL_SWITCH)


def enabled() -> bool:
    """Whether layers built now use the OpenBLAS kernels: CPU device and a library."""
    return cpu_attention.kernel_ready(_state, library, ENV_SWITCH,
                                      "convolutions and dense layers use MindSpore's own CPU kernels")


def mindspore_kernels():
    """Inside the block, layers built use MindSpore's own kernels (as with ``MIND_DIFFUSION_BLAS=off``);
    afterwards the switch and the built state are as before (tests and benches comparing the two)."""
    return cpu_attention.switched_off(_state, ENV_SWITCH)


def key_part() -> str:
    """What the compile cache key of a CPU run needs to know (graphs with and without the kernels differ)."""
    lib = library()
    return f"blas:{lib.parent.name}:{conv_backend()}" if lib is not None else "mindspore"


def _conv_params(cell) -> tuple[int, ...] | None:
    """(stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, dilation_h, dilation_w) of a
    plain NCHW group-1 ``nn.Conv2d``, or None when the kernel does not take it ("same" padding)."""
    if cell.group != 1 or getattr(cell, "data_format", "NCHW") != "NCHW":
        return None
    stride = tuple(cell.stride)[-2:]
    dilation = tuple(cell.dilation)[-2:]
    if cell.pad_mode == "valid":
        pads = (0, 0, 0, 0)
    elif cell.pad_mode == "pad":
        pad = cell.padding
        pads = (pad,) * 4 if isinstance(pad, int) else tuple(pad)
        if len(pads) != 4:
            return None
    else:
        return None
    return (*stride, *pads, *dilation)


def _conv_out_shape(xs, ws, p):
    sh, sw, pt, pb, pl, pr, dh, dw = p
    ho = (xs[2] + pt + pb - dh * (ws[2] - 1) - 1) // sh + 1
    wo = (xs[3] + pl + pr - dw * (ws[3] - 1) - 1) // sw + 1
    return [xs[0], ws[0], ho, wo]


def _conv_cell(prim, params):
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn, ops

    lib = library()
    dnnl = conv_backend() == "onednn"
    name = "MindDiffusionDnnlConv2d" if dnnl else "MindDiffusionConv2d"
    p = tuple(int(v) for v in params)
    zeros = ops.ZerosLike()
    grad_input = ops.Custom(f"{lib}:{name}GradInput", out_shape=lambda dy, w, x, q: x,
                            out_dtype=lambda dy, w, x, q: ms.float32, func_type="aot")
    grad_weight = ops.Custom(f"{lib}:{name}GradWeight", out_shape=lambda dy, x, w, q: w,
                             out_dtype=lambda dy, x, w, q: ms.float32, func_type="aot")

    def bprop(x, w, q, out, dout):
        return grad_input(dout, w, x, q), grad_weight(dout, x, w, q), zeros(q)

    forward = ops.Custom(f"{lib}:{name}", out_shape=lambda xs, ws, qs: _conv_out_shape(xs, ws, p),
                         out_dtype=lambda x, w, q: ms.float32, func_type="aot", bprop=bprop)
    # the output shape depends on the geometry, which is a tensor's values: PyNative caches an
    # operator's inferred shape by its attributes and input shapes, so the geometry is an attribute
    forward.add_prim_attr("geometry", list(p))

    class BlasConv2D(nn.Cell):
        """``conv2d(x, w)`` through oneDNN for every float32 product (:func:`conv_backend` "onednn"), or
        through OpenBLAS for float32 products of at least ``MIN_WORK`` multiply-adds per image; the
        original primitive otherwise."""

        def __init__(self):
            super().__init__()
            self.forward = forward
            self.prim = prim
            self.params = Tensor(np.array(p, np.int64))
            self.stride_area = p[0] * p[1]
            self.min_work = 0 if dnnl else MIN_WORK

        def construct(self, x, w):
            # static shapes: graph mode decides this when it compiles
            xs, ws = x.shape, w.shape
            work = ws[0] * ws[1] * ws[2] * ws[3] * xs[2] * xs[3] // self.stride_area
            if x.dtype == ms.float32 and w.dtype == ms.float32 and work >= self.min_work:
                return self.forward(x, w, self.params)
            return self.prim(x, w)      # a layer under to_float is restored first (restore())

    return BlasConv2D()


def _dense_cell(prim):
    import mindspore as ms
    from mindspore import nn, ops

    lib = library()
    mm_nn = ops.Custom(f"{lib}:MindDiffusionMatMulNN", out_shape=lambda a, b: [a[0], b[1]],
                       out_dtype=lambda a, b: ms.float32, func_type="aot")
    mm_tn = ops.Custom(f"{lib}:MindDiffusionMatMulTN", out_shape=lambda a, b: [a[1], b[1]],
                       out_dtype=lambda a, b: ms.float32, func_type="aot")

    def bprop(x, w, out, dout):
        # y = x w^T: dx = dy w, dw = dy^T x
        return mm_nn(dout, w), mm_tn(dout, x)

    forward = ops.Custom(f"{lib}:MindDiffusionMatMulNT", out_shape=lambda a, b: [a[0], b[0]],
                         out_dtype=lambda a, b: ms.float32, func_type="aot", bprop=bprop)

    class BlasMatMulNT(nn.Cell):
        """``matmul(x, w)`` = x w^T through OpenBLAS for 2-D float32 products of at least ``MIN_WORK``
        multiply-adds, the original primitive otherwise."""

        def __init__(self):
            super().__init__()
            self.forward = forward
            self.prim = prim
            self.min_work = MIN_WORK

        def construct(self, x, w):
            xs, ws = x.shape, w.shape
            if x.dtype == ms.float32 and w.dtype == ms.float32 and xs[0] * xs[1] * ws[0] >= self.min_work:
                return self.forward(x, w)
            return self.prim(x, w)

    return BlasMatMulNT()


def accelerate(cell):
    """Give ``cell`` (an ``nn.Conv2d`` or ``nn.Dense``, LoRA layers included) the OpenBLAS kernels when
    :func:`enabled`; returns the cell. A cell they do not take (groups, "same" padding, a Dense with
    ``transpose_b`` off) keeps MindSpore's kernel."""
    from mindspore import nn, ops

    if getattr(cell, "_blas", False) or not enabled():
        return cell
    if isinstance(cell, nn.Conv2d):
        params = _conv_params(cell)
        if params is None or not isinstance(cell.conv2d, ops.Primitive):
            return cell
        prim = cell.conv2d
        cell.conv2d = _conv_cell(prim, params)
    elif isinstance(cell, nn.Dense):
        prim = cell.matmul
        if not isinstance(prim, ops.MatMul) or prim.transpose_a or not prim.transpose_b:
            return cell
        cell.matmul = _dense_cell(prim)
    else:
        return cell
    cell._blas = True
    return cell


def norm_op(kind: str, eps: float, groups: int = 1):
    """A Custom primitive ``op(x, gamma, beta, p) -> y`` (float32): ``kind`` "group" (x (B, C, ...),
    p = (groups, eps); its backward is two more kernels, so GroupNorm trains through it too) or "layer"
    (x (M, D), p = (eps,); inference, its backward composed of MindSpore ops), or None when not
    :func:`enabled`. Both backward paths recompute the moments from x."""
    import mindspore as ms
    from mindspore import ops

    if kind not in ("group", "layer"):
        raise ValueError(f"norm kind must be 'group' or 'layer', got {kind!r}")
    if not enabled():
        return None
    lib = library()
    eps = float(eps)
    zeros = ops.ZerosLike()

    if kind == "group":
        grad_x = ops.Custom(f"{lib}:MindDiffusionGroupNormGrad", out_shape=lambda dy, x, g, p: x,
                            out_dtype=lambda dy, x, g, p: ms.float32, func_type="aot")
        grad_affine = ops.Custom(f"{lib}:MindDiffusionGroupNormGradAffine", out_shape=lambda dy, x, p: [2, x[1]],
                                 out_dtype=lambda dy, x, p: ms.float32, func_type="aot")

        def bprop(x, gamma, beta, p, out, dout):
            affine = grad_affine(dout, x, p)
            return grad_x(dout, x, gamma, p), affine[0], affine[1], zeros(p)

        func = "MindDiffusionGroupNorm"
    else:
        def bprop(x, gamma, beta, p, out, dout):
            mu = x.mean(axis=-1, keep_dims=True)
            xc = x - mu
            rstd = ops.rsqrt((xc * xc).mean(axis=-1, keep_dims=True) + eps)
            xhat = xc * rstd
            dyg = dout * gamma
            dx = rstd * (dyg - dyg.mean(axis=-1, keep_dims=True) - xhat * (dyg * xhat).mean(axis=-1, keep_dims=True))
            return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0), zeros(p)

        func = "MindDiffusionLayerNorm"
    return ops.Custom(f"{lib}:{func}", out_shape=lambda x, g, b, p: x, out_dtype=lambda x, g, b, p: ms.float32,
                      func_type="aot", bprop=bprop)


def geglu_op(exact: bool):
    """A Custom primitive ``op(h, p) -> a * gelu(g)`` for inference (float32; ``h = [a | g]`` on its last
    axis, ``p`` from :func:`geglu_params`): ``exact`` the erf GELU, else MindSpore's tanh GeLU; None when
    not :func:`enabled`. Its backward is composed of MindSpore ops."""
    import mindspore as ms
    from mindspore import ops

    if not enabled():
        return None
    lib = library()
    zeros = ops.ZerosLike()
    erf, sigmoid = ops.Erf(), ops.Sigmoid()
    c_erf, c_tanh = 0.7071067811865476, 0.7978845608028654

    def bprop(h, p, out, dout):
        a, g = ops.split(h, h.shape[-1] // 2, axis=-1)
        if exact:
            cdf = erf(g * c_erf) * 0.5 + 0.5
            gelu = g * cdf
            dgelu = cdf + g * ops.exp(-0.5 * g * g) * 0.3989422804014327
        else:
            # 0.5 (1 + tanh u) = sigmoid(2u): MindSpore's CPU Tanh rounds to +-1 from |u| ~ 5, which
            # would zero the tails of 1 - tanh^2
            sg = sigmoid(2.0 * c_tanh * (g + 0.044715 * g * g * g))
            gelu = g * sg
            dgelu = sg + 2.0 * g * sg * (1.0 - sg) * c_tanh * (1.0 + 3 * 0.044715 * g * g)
        return ops.concat((dout * gelu, dout * a * dgelu), axis=-1), zeros(p)

    def out_shape(hs, ps):
        return list(hs[:-1]) + [hs[-1] // 2]

    return ops.Custom(f"{lib}:MindDiffusionGeGLU", out_shape=out_shape, out_dtype=lambda h, p: ms.float32,
                      func_type="aot", bprop=bprop)


def batchnorm_relu_op():
    """A Custom primitive ``op(x, beta, mean, var, p) -> relu((x - mean) / sqrt(var + eps) + beta)`` per
    channel of x (B, C, ...) for inference (float32, ``p`` = (eps,) from :func:`norm_params` "layer"):
    the FID Inception's BatchNorm without gamma and its ReLU in one pass; None when not
    :func:`enabled`. It has no backward (the Inception's parameters are frozen)."""
    import mindspore as ms
    from mindspore import ops

    if not enabled():
        return None
    return ops.Custom(f"{library()}:MindDiffusionBatchNormReLU", out_shape=lambda x, b, m, v, p: x,
                      out_dtype=lambda x, b, m, v, p: ms.float32, func_type="aot")


def non_finite_op():
    """A Custom primitive ``op(x) -> (1,)`` float32: 1 when the float32 tensor x holds a NaN or an
    infinity, else 0 (the training step's overflow check, one read of each gradient); None when not
    :func:`enabled`."""
    import mindspore as ms
    from mindspore import ops

    if not enabled():
        return None
    return ops.Custom(f"{library()}:MindDiffusionNonFinite", out_shape=lambda x: [1],
                      out_dtype=lambda x: ms.float32, func_type="aot")


def geglu_params(exact: bool):
    """The ``p`` tensor of :func:`geglu_op`."""
    import numpy as np
    from mindspore import Tensor

    return Tensor(np.array([1.0 if exact else 0.0], np.float32))


def norm_params(kind: str, eps: float, groups: int = 1):
    """The ``p`` tensor of :func:`norm_op`."""
    import numpy as np
    from mindspore import Tensor

    vals = (float(groups), float(eps)) if kind == "group" else (float(eps),)
    return Tensor(np.array(vals, np.float32))


def restore(cell):
    """Give ``cell`` back MindSpore's own primitive (before ``to_float``: MindSpore's mixed precision
    casts the operator's inputs after the cell's dtype check, so the OpenBLAS cell cannot stay); returns
    the cell."""
    if getattr(cell, "_blas", False):
        from mindspore import nn

        if isinstance(cell, nn.Conv2d):
            cell.conv2d = cell.conv2d.prim
        else:
            cell.matmul = cell.matmul.prim
        cell._blas = False
    return cell

"""The OpenBLAS CPU kernels (mind_diffusion/cpu_gemm.py, gemm_cpu.cc): convolutions (all three forms,
and the oneDNN convolutions where the onednn wheels are installed) and dense layers against the float64 closed form and against MindSpore's own kernels, forward and
backward; GroupNorm / LayerNorm / GEGLU inference kernels and their backward; whole networks with and
without them; how they are switched off, keyed and what falls back."""
from __future__ import annotations

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn, ops

from mind_diffusion import cpu_gemm


@pytest.fixture
def blas_lib(monkeypatch):
    """The library; layers built in the test send every product to it (``MIN_WORK`` 0: the tests'
    shapes are far below the default threshold)."""
    lib = cpu_gemm.library()
    if lib is None:
        pytest.skip(f"the OpenBLAS CPU kernel is not available here: {cpu_gemm.unavailable_reason()}")
    monkeypatch.setattr(cpu_gemm, "MIN_WORK", 0)
    return lib


@pytest.fixture(params=["onednn", "openblas"])
def conv_path(request, blas_lib):
    """Each convolution backend of the library: oneDNN (skipped where the wheels are not installed) and
    the OpenBLAS forms (the library built with ``MIND_DIFFUSION_DNNL=off``)."""
    if request.param == "openblas":
        with cpu_gemm.openblas_convolutions():
            assert cpu_gemm.conv_backend() == "openblas"
            yield "openblas"
        return
    if cpu_gemm.conv_backend() != "onednn":
        pytest.skip(f"the oneDNN convolutions are not available here: {cpu_gemm.dnnl_info()}")
    yield "onednn"


def _conv_closed_form(x, w, b, stride, pads, dilation):
    """float64 NCHW cross-correlation, pads (top, bottom, left, right)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    sh, sw = stride
    dh, dw = dilation
    xp = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    n, c, hp, wp = xp.shape
    o, _, kh, kw = w.shape
    ho = (hp - dh * (kh - 1) - 1) // sh + 1
    wo = (wp - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((n, o, ho, wo))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + sh * (ho - 1) + 1:sh, j * dw:j * dw + sw * (wo - 1) + 1:sw]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y + b.reshape(1, -1, 1, 1)


def _conv_grads_closed_form(x, w, r, stride, pads, dilation):
    """float64 gradients of sum(conv(x, w) + b) * r) with respect to x, w and b (the adjoint of
    :func:`_conv_closed_form`)."""
    x, w, r = x.astype(np.float64), w.astype(np.float64), r.astype(np.float64)
    sh, sw = stride
    dh, dw = dilation
    xp = np.pad(x, ((0, 0), (0, 0), pads[:2], pads[2:]))
    o, _, kh, kw = w.shape
    ho, wo = r.shape[2:]
    dxp, dwt = np.zeros_like(xp), np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + sh * (ho - 1) + 1, sh)
            cols = slice(j * dw, j * dw + sw * (wo - 1) + 1, sw)
            dwt[:, :, i, j] = np.einsum("nchw,nohw->oc", xp[:, :, rows, cols], r)
            dxp[:, :, rows, cols] += np.einsum("nohw,oc->nchw", r, w[:, :, i, j])
    dx = dxp[:, :, pads[0]:dxp.shape[2] - pads[1], pads[2]:dxp.shape[3] - pads[3]]
    return dx, dwt, r.sum(axis=(0, 2, 3))


class _Grads(nn.Cell):
    """d sum(net(x) * r) / d (x, parameters)."""

    def __init__(self, net, r):
        super().__init__()
        self.net = net
        self.r = r
        self.params = ms.ParameterTuple(net.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)

    def construct(self, x):
        return self.grad(lambda t: (self.net(t) * self.r).sum(), self.params)(x)


def _loss_grads(net, x, r):
    inputs, params = _Grads(net, Tensor(r))(Tensor(x))
    return [g.asnumpy() for g in (*inputs, *params)]


# (batch, in, H, W, out, kernel, stride, padding, dilation): the shifted form (stride 1, >= 32
# channels, >= 1024 pixels), 1x1 image by image (>= 1024 pixels), batched im2col (small images, few
# channels, strides; a 7x7 kernel whose images fill more than one chunk), 1x1 batched, an asymmetric
# kernel with asymmetric padding (Inception's 1x7), dilation
CONVS = [(1, 32, 32, 33, 8, 3, 1, 1, 1), (2, 16, 32, 32, 8, 1, 1, 0, 1), (3, 8, 128, 128, 4, 7, 1, 3, 1),
         (2, 40, 9, 11, 24, 3, 1, 1, 1), (2, 3, 8, 8, 16, 3, 1, 1, 1), (1, 40, 10, 10, 24, 3, 2, 1, 1),
         (1, 48, 4, 4, 96, 3, 1, 1, 1), (2, 64, 8, 8, 48, 1, 1, 0, 1), (1, 8, 7, 9, 5, (1, 7), 1, (0, 0, 3, 3), 1),
         (2, 33, 9, 9, 16, 3, 1, 2, 2), (1, 32, 17, 17, 20, 3, 2, 0, 1)]


@pytest.mark.parametrize("case", CONVS, ids=["shifted", "1x1-per-image", "7x7-two-chunks", "small-images",
                                             "few-channels", "stride2", "tiny-image", "1x1-batched",
                                             "1x7-asym-pad", "dilated", "stride2-valid"])
def test_convolution_is_the_closed_form_and_its_backward_is_mindspores(ms_mode, conv_path, case):
    n, c, h, w, o, k, s, p, d = case
    kw = dict(stride=s, pad_mode="pad" if p else "valid", padding=p, dilation=d, has_bias=True)
    with cpu_gemm.mindspore_kernels():
        ref = nn.Conv2d(c, o, k, **kw)
    fast = nn.Conv2d(c, o, k, **kw)
    assert cpu_gemm.accelerate(fast) is fast and fast._blas and not getattr(ref, "_blas", False)
    rng = np.random.default_rng(0)
    wt = (rng.standard_normal(ref.weight.shape) / np.sqrt(np.prod(ref.weight.shape[1:]))).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    for net in (ref, fast):
        net.weight.set_data(Tensor(wt))
        net.bias.set_data(Tensor(bias))
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    pads = (p,) * 4 if isinstance(p, int) else p
    want = _conv_closed_form(x, wt, bias, (s, s), pads, (d, d))
    got = fast(Tensor(x)).asnumpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 2e-5 * max(1.0, np.abs(want).max())
    # the names of the parameters are the layer's own (checkpoints load as before)
    assert [q.name for q in fast.get_parameters()] == [q.name for q in ref.get_parameters()]
    r = rng.standard_normal(want.shape).astype(np.float32)
    exact = _conv_grads_closed_form(x, wt, r, (s, s), pads, (d, d))
    for g_fast, g_ref, g, name in zip(_loss_grads(fast, x, r), _loss_grads(ref, x, r), exact, ("x", "weight", "bias")):
        assert np.abs(g_ref).max() > 1e-3, name
        # float32 sums of up to 49 k terms (the 7x7 weight gradient; oneDNN on one thread sums them in one
        # run: 1.2e-5 of the largest entry, MindSpore's kernel 7e-7): within 2e-5 of the float64 closed
        # form, relative to the gradient's largest entry, and of MindSpore's
        scale = max(1.0, np.abs(g).max())
        err_fast, err_ref = np.abs(g_fast - g).max(), np.abs(g_ref - g).max()
        assert err_fast <= 2e-5 * scale and err_ref <= 2e-5 * scale, (name, err_fast, err_ref)
        assert np.abs(g_fast - g_ref).max() <= 2e-5 * scale, name


def test_dense_is_the_closed_form_and_its_backward_is_mindspores(ms_mode, blas_lib):
    with cpu_gemm.mindspore_kernels():
        ref = nn.Dense(40, 24)
    fast = cpu_gemm.accelerate(nn.Dense(40, 24))
    assert fast._blas
    rng = np.random.default_rng(1)
    wt = rng.standard_normal((24, 40)).astype(np.float32)
    bias = rng.standard_normal(24).astype(np.float32)
    for net in (ref, fast):
        net.weight.set_data(Tensor(wt))
        net.bias.set_data(Tensor(bias))
    x = rng.standard_normal((3, 5, 40)).astype(np.float32)      # 3-D: Dense flattens the leading axes
    want = x.astype(np.float64) @ wt.T.astype(np.float64) + bias
    got = fast(Tensor(x)).asnumpy()
    assert got.shape == (3, 5, 24) and np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    r = rng.standard_normal(want.shape).astype(np.float32)
    for g_fast, g_ref in zip(_loss_grads(fast, x, r), _loss_grads(ref, x, r)):
        assert np.abs(g_fast - g_ref).max() <= 1e-5 * max(1.0, np.abs(g_ref).max())


def _small_and_large_convolutions(rng):
    """(small, fast layer, MindSpore's layer, output of each, closed form) for a 37 k and an 85 M
    multiply-add per image convolution."""
    for c, h, o, small in ((8, 8, 8, True), (64, 48, 64, False)):
        with cpu_gemm.mindspore_kernels():
            ref = nn.Conv2d(c, o, 3, pad_mode="pad", padding=1, has_bias=True)
        fast = cpu_gemm.accelerate(nn.Conv2d(c, o, 3, pad_mode="pad", padding=1, has_bias=True))
        fast.weight.set_data(ref.weight.data.copy())
        fast.bias.set_data(ref.bias.data.copy())
        x = Tensor(rng.standard_normal((2, c, h, h)).astype(np.float32))
        want = _conv_closed_form(x.asnumpy(), ref.weight.asnumpy(), ref.bias.asnumpy(), (1, 1), (1,) * 4, (1, 1))
        yield small, fast, fast(x).asnumpy(), ref(x).asnumpy(), want


def test_small_products_keep_mindspores_kernels_and_large_ones_do_not(ms_mode, blas_lib, monkeypatch):
    # the OpenBLAS forms: products below MIN_WORK stay with MindSpore's kernels
    monkeypatch.setattr(cpu_gemm, "MIN_WORK", 1 << 25)
    with cpu_gemm.openblas_convolutions():
        for small, fast, a, b, want in _small_and_large_convolutions(np.random.default_rng(5)):
            assert fast.conv2d.min_work == 1 << 25
            if small:
                assert np.array_equal(a, b)           # the same MindSpore kernel
            else:
                assert np.abs(a - want).max() <= 2e-5 * np.abs(want).max() and not np.array_equal(a, b)


def test_onednn_takes_every_float32_convolution(ms_mode, blas_lib, monkeypatch):
    if cpu_gemm.conv_backend() != "onednn":
        pytest.skip(f"the oneDNN convolutions are not available here: {cpu_gemm.dnnl_info()}")
    monkeypatch.setattr(cpu_gemm, "MIN_WORK", 1 << 25)
    info = cpu_gemm.dnnl_info()
    assert info.startswith("oneDNN 3.") and "(" in info      # its version and the instruction set it runs
    for small, fast, a, b, want in _small_and_large_convolutions(np.random.default_rng(5)):
        assert fast.conv2d.min_work == 0
        assert np.abs(a - want).max() <= 2e-5 * np.abs(want).max()
        assert np.abs(b - want).max() <= 2e-5 * np.abs(want).max()   # MindSpore's own kernel still runs beside it


def test_other_dtypes_and_layers_keep_mindspores_kernels(blas_lib):
    # fp16 inputs take the original primitive (the cell's dtype check), grouped convolutions are left alone
    fast = cpu_gemm.accelerate(nn.Conv2d(8, 8, 3, pad_mode="pad", padding=1))
    x = np.random.default_rng(2).standard_normal((1, 8, 5, 5)).astype(np.float16)
    y32 = fast(Tensor(x.astype(np.float32))).asnumpy()
    fast.to_float(ms.float16)
    y16 = fast(Tensor(x)).asnumpy()
    assert y16.dtype == np.float16 and np.abs(y16.astype(np.float32) - y32).max() < 0.05
    grouped = cpu_gemm.accelerate(nn.Conv2d(8, 8, 3, group=2, pad_mode="pad", padding=1))
    assert not getattr(grouped, "_blas", False) and isinstance(grouped.conv2d, ops.Primitive)
    same = cpu_gemm.accelerate(nn.Conv2d(8, 8, 3, pad_mode="same"))
    assert not getattr(same, "_blas", False)


@pytest.mark.parametrize("kind", ["group", "layer"])
def test_norm_kernels_are_the_composed_norms_in_inference_and_training(ms_mode, blas_lib, kind):
    from mind_diffusion.nn.layers import GroupNorm, LayerNorm

    build = (lambda: GroupNorm(8, 64)) if kind == "group" else (lambda: LayerNorm(48))
    shape = (2, 64, 5, 7) if kind == "group" else (3, 5, 48)
    fast = build()
    with cpu_gemm.mindspore_kernels():
        ref = build()
    assert fast.fused is not None and ref.fused is None
    rng = np.random.default_rng(3)
    for a, b in zip(fast.get_parameters(), ref.get_parameters()):
        v = (rng.standard_normal(a.shape) * 0.3 + (1.0 if a.name.endswith("gamma") else 0.0)).astype(np.float32)
        a.set_data(Tensor(v))
        b.set_data(Tensor(v))
    x = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    # float64 closed form
    g = fast.gamma.asnumpy().astype(np.float64)
    bt = fast.beta.asnumpy().astype(np.float64)
    if kind == "group":
        xg = x.astype(np.float64).reshape(2, 8, -1)
        xhat = ((xg - xg.mean(-1, keepdims=True)) / np.sqrt(xg.var(-1, keepdims=True) + 1e-5)).reshape(shape)
        want = xhat * g.reshape(1, -1, 1, 1) + bt.reshape(1, -1, 1, 1)
    else:
        x64 = x.astype(np.float64)
        want = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5) * g + bt
    got = fast(Tensor(x)).asnumpy()
    assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()
    assert np.abs(got - ref(Tensor(x)).asnumpy()).max() <= 2e-6 * np.abs(want).max()
    # a gradient taken in inference mode goes through the kernel's composed bprop
    r = rng.standard_normal(shape).astype(np.float32)
    for g_fast, g_ref in zip(_loss_grads(fast, x, r), _loss_grads(ref, x, r)):
        assert np.abs(g_ref).max() > 1e-3
        assert np.abs(g_fast - g_ref).max() <= 1e-5 * max(1.0, np.abs(g_ref).max())
    # training: GroupNorm keeps its kernels (forward and backward), LayerNorm runs the composed ops
    fast.set_train(True)
    ref.set_train(True)
    assert np.abs(fast(Tensor(x)).asnumpy() - want).max() <= 2e-6 * np.abs(want).max()
    for g_fast, g_ref in zip(_loss_grads(fast, x, r), _loss_grads(ref, x, r)):
        assert np.abs(g_fast - g_ref).max() <= 1e-5 * max(1.0, np.abs(g_ref).max())
    if kind == "group":
        # against the float64 closed form of the backward too
        x64, r64 = x.astype(np.float64).reshape(2, 8, -1), r.astype(np.float64)
        xhat64 = ((x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-5))
        dyg = (r64 * g.reshape(1, -1, 1, 1)).reshape(2, 8, -1)
        rstd = 1.0 / np.sqrt(x64.var(-1, keepdims=True) + 1e-5)
        dx = rstd * (dyg - dyg.mean(-1, keepdims=True) - xhat64 * (dyg * xhat64).mean(-1, keepdims=True))
        got_dx, got_dg, got_db = _loss_grads(fast, x, r)
        assert np.abs(got_dx - dx.reshape(shape)).max() <= 1e-5 * np.abs(dx).max()
        assert np.abs(got_dg - (r64 * xhat64.reshape(shape)).sum((0, 2, 3))).max() <= 1e-5 * np.abs(got_dg).max()
        assert np.abs(got_db - r64.sum((0, 2, 3))).max() <= 1e-5 * np.abs(got_db).max()


@pytest.mark.parametrize("gelu", ["exact", "tanh"])
def test_geglu_kernel_is_the_composed_geglu_in_inference_and_training(ms_mode, blas_lib, gelu):
    from scipy.special import erf

    from mind_diffusion.ldm.unet import GEGLU

    fast, ref = _built_both_ways(lambda: GEGLU(24, 40, gelu))
    assert fast.fused is not None and ref.fused is None
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 7, 24)) * 5.0).astype(np.float32)
    # float64 closed form on the projection's output (a wide range of gate values: erf / tanh tails)
    h = ref.proj(Tensor(x)).asnumpy().astype(np.float64)
    assert h[..., 40:].min() < -3 and h[..., 40:].max() > 3
    a, g = h[..., :40], h[..., 40:]
    if gelu == "exact":
        want = a * g * 0.5 * (1.0 + erf(g / np.sqrt(2.0)))
    else:
        want = a * 0.5 * g * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g + 0.044715 * g ** 3)))
    got = fast(Tensor(x)).asnumpy()
    assert got.shape == (2, 7, 40)
    assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()
    assert np.abs(got - ref(Tensor(x)).asnumpy()).max() <= 2e-6 * np.abs(want).max()
    # a gradient taken in inference mode goes through the kernel's composed bprop
    r = rng.standard_normal((2, 7, 40)).astype(np.float32)
    for g_fast, g_ref in zip(_loss_grads(fast, x, r), _loss_grads(ref, x, r)):
        assert np.abs(g_ref).max() > 1e-3
        assert np.abs(g_fast - g_ref).max() <= 1e-5 * max(1.0, np.abs(g_ref).max())
    # training, and a float16 projection, run the composed ops
    fast.set_train(True)
    assert np.abs(fast(Tensor(x)).asnumpy() - want).max() <= 2e-6 * np.abs(want).max()
    fast.set_train(False)
    from mind_diffusion.nn.layers import apply_compute_dtype

    apply_compute_dtype(fast, ms.float16)
    half = fast(Tensor(x)).asnumpy()
    assert half.dtype == np.float16 and np.abs(half - want).max() <= 2e-2 * np.abs(want).max()


def test_batchnorm_relu_kernel_is_the_fid_inceptions_bn_and_relu(ms_mode, blas_lib):
    """The FID Inception's BasicConv: BN (no gamma) and ReLU as one kernel equal the closed form and
    MindSpore's two kernels, at channel counts and sizes of the network and a 1x1 map."""
    from mind_diffusion.metrics.inception import BN_EPS, BasicConv

    rng = np.random.default_rng(9)
    for c, hw in ((32, (9, 7)), (192, (1, 1))):
        fast, ref = _built_both_ways(lambda: BasicConv(16, c, 3, padding=1))
        assert fast.bn_relu is not None and ref.bn_relu is None
        stats = {"beta": rng.standard_normal(c), "mean": rng.standard_normal(c), "var": rng.uniform(0.01, 3.0, c)}
        for cell in (fast, ref):
            for name, v in stats.items():
                getattr(cell, name).set_data(Tensor(v.astype(np.float32)))
        x = (rng.standard_normal((3, 16, *hw)) * 2).astype(np.float32)
        y = ref.linear(Tensor(x)).asnumpy().astype(np.float64)
        want = np.maximum((y - stats["mean"][:, None, None].astype(np.float32))
                          / np.sqrt(stats["var"][:, None, None].astype(np.float32) + BN_EPS)
                          + stats["beta"][:, None, None].astype(np.float32), 0.0)
        assert (want == 0).mean() > 0.2 and (want > 0).mean() > 0.2
        got = fast(Tensor(x)).asnumpy()
        assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max()
        assert np.abs(got - ref(Tensor(x)).asnumpy()).max() <= 2e-6 * np.abs(want).max()


class _Loss(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def construct(self, x, t):
        return (self.net(x, t) ** 2).mean()


class _ParamGrads(nn.Cell):
    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.params = ms.ParameterTuple(loss.trainable_params())
        self.grad = ops.GradOperation(get_by_list=True)

    def construct(self, x, t):
        return self.grad(self.loss, self.params)(x, t)


def _built_both_ways(build):
    fast = build()
    with cpu_gemm.mindspore_kernels():
        ref = build()
    ms.load_param_into_net(ref, {p.name: p for p in fast.get_parameters()}, strict_load=True)
    return fast, ref


def test_networks_give_the_same_outputs_and_training_gradients_with_and_without_them(ms_mode, blas_lib):
    from mind_diffusion.ddpm.unet import DDPMUNet
    from mind_diffusion.ldm.unet import LDMUNet

    cfg = dict(in_channels=4, out_channels=4, model_channels=32, attention_resolutions=(1, 2),
               num_res_blocks=1, channel_mult=(1, 2), num_heads=2, context_dim=24, num_groups=8,
               transformer_depth=1)
    fast, ref = _built_both_ways(lambda: LDMUNet(**cfg))
    convs = [c for _, c in fast.cells_and_names() if isinstance(c, (nn.Conv2d, nn.Dense))]
    assert convs and all(getattr(c, "_blas", False) for c in convs)
    assert not any(getattr(c, "_blas", False) for _, c in ref.cells_and_names())
    assert [p.name for p in fast.get_parameters()] == [p.name for p in ref.get_parameters()]
    rng = np.random.default_rng(4)
    for p in fast.get_parameters():      # no zero-initialised layer: every path counts
        p.set_data(Tensor((rng.standard_normal(p.shape) * 0.1).astype(np.float32)))
    ms.load_param_into_net(ref, {p.name: p for p in fast.get_parameters()}, strict_load=True)
    x = Tensor(rng.standard_normal((2, 4, 16, 16)).astype(np.float32))
    ctx = Tensor(rng.standard_normal((2, 7, 24)).astype(np.float32))
    t = Tensor(np.array([10, 700], np.int32))
    a, b = fast(x, t, ctx).asnumpy(), ref(x, t, ctx).asnumpy()
    assert np.abs(b).max() > 0.1 and np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())

    # DDPM training step's gradients (training mode: the norms compose, convolutions use the kernels)
    ddpm = dict(img_channels=3, base_channels=16, channel_mults=(1, 2), num_res_blocks=1, time_emb_dim=32,
                dropout=0.0, attention_resolutions=(1,), num_groups=8)
    fast, ref = _built_both_ways(lambda: DDPMUNet(**ddpm))
    grads = []
    xs = Tensor(rng.standard_normal((2, 3, 8, 8)).astype(np.float32))
    ts = Tensor(np.array([3, 500], np.int32))
    for p in fast.get_parameters():
        p.set_data(Tensor((rng.standard_normal(p.shape) * 0.1).astype(np.float32)))
    ms.load_param_into_net(ref, {p.name: p for p in fast.get_parameters()}, strict_load=True)
    for net in (fast, ref):
        net.set_train(True)
        loss = _Loss(net)
        g = _ParamGrads(loss)(xs, ts)
        grads.append((float(loss(xs, ts).asnumpy()), [v.asnumpy() for v in g]))
    assert abs(grads[0][0] - grads[1][0]) <= 1e-6 * abs(grads[1][0])
    for gf, gr in zip(grads[0][1], grads[1][1]):
        assert np.abs(gf - gr).max() <= 1e-5 * max(1e-3, np.abs(gr).max())


def test_switch_off_missing_blas_and_the_compile_cache_key(tmp_path, monkeypatch, capsys, blas_lib):
    from mind_diffusion import compile_cache, cpu_attention

    saved = dict(cpu_gemm._state)
    try:
        monkeypatch.setenv(cpu_attention.ENV_CACHE, str(tmp_path / "kernels"))
        cpu_gemm._state.clear()
        lib = cpu_gemm.library()
        assert lib is not None and lib.parent.parent == tmp_path / "kernels" and lib.name == "gemm_cpu.so"
        parts = compile_cache.key_parts(device_target="CPU", mode="graph", precision="float32", script_key={"x": 1})
        assert parts["gemm"] == f"blas:{lib.parent.name}:{cpu_gemm.conv_backend()}"
        assert "gemm" not in compile_cache.key_parts(device_target="GPU", mode="graph", precision="float16",
                                                     script_key={"x": 1})
        # no OpenBLAS with a CBLAS sgemm: MindSpore's kernels, one note that says why
        cpu_gemm._state.clear()
        monkeypatch.setattr(cpu_gemm, "_openblas", lambda: None)
        conv = cpu_gemm.accelerate(nn.Conv2d(4, 4, 3))
        cpu_gemm.accelerate(nn.Dense(4, 4))
        assert not getattr(conv, "_blas", False) and cpu_gemm.norm_op("group", 1e-5, 2) is None
        err = capsys.readouterr().err
        assert err.count("note: convolutions and dense layers use MindSpore's own CPU kernels") == 1
        assert "numpy has no bundled OpenBLAS" in err
        assert compile_cache.key_parts(device_target="CPU", mode="graph", precision="float32",
                                       script_key={"x": 1})["gemm"] == "mindspore"
        # switched off: no note
        cpu_gemm._state.clear()
        monkeypatch.setenv(cpu_gemm.ENV_SWITCH, "off")
        assert not getattr(cpu_gemm.accelerate(nn.Conv2d(4, 4, 3)), "_blas", False)
        assert capsys.readouterr().err == ""
    finally:
        cpu_gemm._state.clear()
        cpu_gemm._state.update(saved)


def test_openblas_kernel_family_is_named_from_the_cpu_flags():
    from mind_diffusion import _env

    avx512 = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
    assert _env.openblas_coretype(avx512 | {"avx512_bf16"}) == "Cooperlake"
    assert _env.openblas_coretype(avx512) == "SkylakeX"
    assert _env.openblas_coretype({"avx2", "fma", "avx512f"}) == "Haswell"   # AVX-512 without BW/VL/DQ
    assert _env.openblas_coretype({"avx2", "fma"}) == "Haswell"
    assert _env.openblas_coretype({"avx", "sse4_2"}) is None and _env.openblas_coretype(set()) is None


def test_a_generic_openblas_core_falls_back_to_mindspores_kernels_with_a_note(tmp_path):
    """numpy's OpenBLAS on a CPU model it does not know loads its generic Prescott kernels (7x slower):
    importing mind_diffusion before numpy names the family from the CPU flags; with the generic family
    loaded anyway (numpy first, or set by hand) the layers keep MindSpore's kernels and one note says
    how to fix it. Each case in a fresh process (OpenBLAS picks its kernels when it loads)."""
    import os
    import subprocess
    import sys

    from mind_diffusion import _env

    flags = _env.cpu_flags()
    if not {"avx2", "fma"} <= flags:
        pytest.skip("needs an x86 CPU with AVX2 + FMA (the families compared)")
    probe = ("import mind_diffusion, numpy, os\n"
             "import mindspore as ms\n"
             "ms.set_device('CPU')\n"
             "from mindspore import nn\n"
             "from mind_diffusion import cpu_gemm\n"
             "conv = cpu_gemm.accelerate(nn.Conv2d(4, 4, 3, pad_mode='pad', padding=1))\n"
             "print(os.environ.get('OPENBLAS_CORETYPE'), cpu_gemm.library() is not None, bool(getattr(conv, '_blas', False)))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    env["MIND_DIFFUSION_KERNEL_CACHE"] = str(tmp_path / "kernels")
    want = _env.openblas_coretype(flags)
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [want, "True", "True"]
    out = subprocess.run([sys.executable, "-c", probe], env={**env, "OPENBLAS_CORETYPE": "Prescott"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["Prescott", "False", "False"]
    assert out.stderr.count("note: convolutions and dense layers use MindSpore's own CPU kernels") == 1
    assert f"generic 'Prescott' kernels" in out.stderr and f"OPENBLAS_CORETYPE={want}" in out.stderr


def test_onednn_is_found_built_in_and_an_unloadable_one_falls_back_to_openblas(tmp_path, monkeypatch, capsys,
                                                                                  blas_lib):
    """The oneDNN install is found under $MIND_DIFFUSION_DNNL_ROOT first (a root without it: one note, then
    the environment's); a libdnnl.so.3 that cannot load still builds, and its convolutions run the OpenBLAS
    forms (conv_backend says so, in one note); the switch builds without oneDNN, silently."""
    from mind_diffusion import cpu_attention

    real = cpu_gemm.onednn()
    if real is None:
        pytest.skip("no oneDNN install (the onednn-cpu-gomp and onednn-devel-cpu-gomp wheels) to build against")
    fake = tmp_path / "dnnl"
    (fake / "lib").mkdir(parents=True)
    (fake / "lib" / "libdnnl.so.3").write_bytes(b"not a shared library")
    (fake / "include").symlink_to(real[1])
    monkeypatch.setenv(cpu_gemm.DNNL_ROOT_ENV, str(tmp_path / "nowhere"))
    assert cpu_gemm.onednn() == real
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{cpu_gemm.DNNL_ROOT_ENV}={tmp_path / 'nowhere'} holds no oneDNN 3" in err
    monkeypatch.setenv(cpu_gemm.DNNL_ROOT_ENV, str(fake))
    assert cpu_gemm.onednn() == (fake / "lib" / "libdnnl.so.3", fake / "include")
    monkeypatch.setenv(cpu_attention.ENV_CACHE, str(tmp_path / "kernels"))
    saved = dict(cpu_gemm._state)
    try:
        cpu_gemm._state.clear()
        assert cpu_gemm.library() is not None
        assert cpu_gemm.dnnl_info().startswith(f"cannot load {fake / 'lib' / 'libdnnl.so.3'}")
        assert cpu_gemm.conv_backend() == "openblas" and cpu_gemm.conv_backend() == "openblas"
        err = capsys.readouterr().err
        assert err.count("note: convolutions use the OpenBLAS kernels: cannot load") == 1, err
        conv = cpu_gemm.accelerate(nn.Conv2d(8, 8, 3, pad_mode="pad", padding=1, has_bias=False))
        x = np.random.default_rng(3).standard_normal((1, 8, 6, 6)).astype(np.float32)
        want = _conv_closed_form(x, conv.weight.asnumpy(), np.zeros(8, np.float32), (1, 1), (1,) * 4, (1, 1))
        assert np.abs(conv(Tensor(x)).asnumpy() - want).max() <= 2e-5 * np.abs(want).max()
        cpu_gemm._state.clear()
        monkeypatch.setenv(cpu_gemm.DNNL_SWITCH, "off")
        assert cpu_gemm._dnnl_flags() == ([], [])
        assert cpu_gemm.dnnl_info() == cpu_gemm.NO_DNNL and cpu_gemm.conv_backend() == "openblas"
        assert "note:" not in capsys.readouterr().err
    finally:
        cpu_gemm._state.clear()
        cpu_gemm._state.update(saved)

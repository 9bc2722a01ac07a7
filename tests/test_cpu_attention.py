"""The fused CPU attention kernel (mind_diffusion/cpu_attention.py, attention_cpu.cc): closed
form forward, its backward against MindSpore's autograd of the composed path, the UNet with and
without it, and how it is built, switched off and keyed."""
from __future__ import annotations

import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, ops

from mind_diffusion import cpu_attention


@pytest.fixture
def fused_lib():
    lib = cpu_attention.library()
    if lib is None:
        pytest.skip(f"the fused CPU kernel is not available here: {cpu_attention.unavailable_reason()}")
    return lib


def _softmax_attention(q, k, v):
    """float64 closed form, q (B, N, H, D) already scaled."""
    q, k, v = (a.astype(np.float64) for a in (q, k, v))
    s = np.einsum("bnhd,bmhd->bhnm", q, k)
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("bhnm,bmhd->bnhd", p, v)


def _composed(q, k, v):
    """MindSpore's composed kernels on the same layout (autograd gives the reference gradient)."""
    qh, kh, vh = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
    p = ops.softmax(ops.BatchMatMul(transpose_b=True)(qh, kh), axis=-1)
    return ops.BatchMatMul()(p, vh).transpose(0, 2, 1, 3)


def _assert_same_gradients(ms_mode, loss_fused, loss_composed, q, k, v):
    """d loss / d (q, k, v) through the fused kernel's bprop equals MindSpore's autograd of the
    composed kernels (graph mode: both under ms.jit)."""
    grads = []
    for fn in (loss_fused, loss_composed):
        grad = ms.grad(fn, grad_position=(0, 1, 2))
        if ms_mode == "graph":
            grad = ms.jit(grad)
        grads.append([t.asnumpy() for t in grad(Tensor(q), Tensor(k), Tensor(v))])
    for name, gf, gc in zip("qkv", *grads):
        assert np.abs(gc).max() > 1e-3, name
        assert np.abs(gf - gc).max() <= 1e-5 * max(1.0, np.abs(gc).max()), name


@pytest.mark.parametrize(("n", "m", "heads", "dim"), [(300, 300, 4, 16), (300, 7, 2, 40), (5, 1100, 1, 8)],
                         ids=["self-partial-block", "cross-77-like", "long-keys-one-head"])
def test_forward_is_the_closed_form_and_backward_is_autograds(ms_mode, fused_lib, n, m, heads, dim):
    op = cpu_attention.fused_attention_op()
    assert op is not None
    rng = np.random.default_rng(n + m)
    q = rng.standard_normal((2, n, heads, dim)).astype(np.float32) * dim ** -0.5 * 3
    k = rng.standard_normal((2, m, heads, dim)).astype(np.float32)
    v = rng.standard_normal((2, m, heads, dim)).astype(np.float32)
    out = op(Tensor(q), Tensor(k), Tensor(v)).asnumpy()
    ref = _softmax_attention(q, k, v)
    assert out.shape == q.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() <= 2e-6 * max(1.0, np.abs(ref).max())

    w = Tensor(rng.standard_normal(q.shape).astype(np.float32))

    def loss_fused(a, b, c):
        return (op(a, b, c) * w).sum()

    def loss_composed(a, b, c):
        return (_composed(a, b, c) * w).sum()

    _assert_same_gradients(ms_mode, loss_fused, loss_composed, q, k, v)


def test_thread_count_setting_results_identical_and_a_bad_value_named(fused_lib, monkeypatch, capsys):
    """MIND_DIFFUSION_ATTENTION_THREADS changes how the blocks are spread, never the numbers; a
    value that is not a positive whole number is named once (with the fix) and the default used."""
    op = cpu_attention.fused_attention_op()
    rng = np.random.default_rng(3)
    q, k, v = (Tensor(rng.standard_normal((2, 700, 3, 16)).astype(np.float32)) for _ in range(3))
    monkeypatch.delenv(cpu_attention.ENV_THREADS, raising=False)
    ref = op(q, k, v).asnumpy()
    for value in ("1", "3", "", "0", "-2", "two", "2.5", "4x", "٣"):
        monkeypatch.setenv(cpu_attention.ENV_THREADS, value)
        assert np.array_equal(op(q, k, v).asnumpy(), ref), value
        problem = cpu_attention.threads_problem()
        assert bool(problem) == (value not in ("1", "3", "")), value
        capsys.readouterr()
        assert cpu_attention.enabled() and cpu_attention.enabled()
        err = capsys.readouterr().err
        if problem:
            assert value in problem and "positive whole number" in problem and "unset it" in problem
            assert err.count(cpu_attention.ENV_THREADS) == 1    # once per distinct bad value
        else:
            assert cpu_attention.ENV_THREADS not in err


@pytest.mark.parametrize(("g", "dim", "n", "m"), [(3, 16, 300, 300), (4, 32, 100, 77), (2, 8, 5, 1100)],
                         ids=["self-partial-block", "with-text-tokens", "long-keys"])
def test_channels_first_layout_closed_form_and_autograd(ms_mode, fused_lib, g, dim, n, m):
    """q (G, dim, N), k / v (G, dim, M): the layout of GLIDE's and the autoencoder's attention."""
    op = cpu_attention.fused_attention_op("channels_first")
    rng = np.random.default_rng(g * n)
    q = rng.standard_normal((g, dim, n)).astype(np.float32) * dim ** -0.5 * 3
    k = rng.standard_normal((g, dim, m)).astype(np.float32)
    v = rng.standard_normal((g, dim, m)).astype(np.float32)
    out = op(Tensor(q), Tensor(k), Tensor(v)).asnumpy()
    # the same problem in the channels-last layout of the closed form (one head)
    as_last = lambda a: a.transpose(0, 2, 1)[:, :, None, :]  # noqa: E731
    ref = _softmax_attention(as_last(q), as_last(k), as_last(v))[:, :, 0, :].transpose(0, 2, 1)
    assert out.shape == q.shape
    assert np.abs(out - ref).max() <= 2e-6 * max(1.0, np.abs(ref).max())

    w = Tensor(rng.standard_normal(q.shape).astype(np.float32))
    bmm_tn, bmm_nt = ops.BatchMatMul(transpose_a=True), ops.BatchMatMul(transpose_b=True)

    def loss_fused(a, b, c):
        return (op(a, b, c) * w).sum()

    def loss_composed(a, b, c):
        return (bmm_nt(c, ops.softmax(bmm_tn(a, b), axis=-1)) * w).sum()

    _assert_same_gradients(ms_mode, loss_fused, loss_composed, q, k, v)


def _built_both_ways(build):
    """(net with the fused kernel, the same net on the composed path)."""
    ms.set_seed(0)
    fused = build()
    with cpu_attention.composed():
        composed = build()
    rng = np.random.default_rng(1)
    for p, q in zip(fused.get_parameters(), composed.get_parameters()):
        val = Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.1)
        p.set_data(val)
        q.set_data(val)
    return fused, composed


def test_glide_and_autoencoder_attention_blocks_with_and_without_it(ms_mode, fused_lib):
    from mind_diffusion.glide.unet import AttentionBlock
    from mind_diffusion.ldm.autoencoder import AttnBlock

    rng = np.random.default_rng(2)
    x = Tensor(rng.standard_normal((2, 32, 8, 8)).astype(np.float32))
    emb = Tensor(rng.standard_normal((2, 16)).astype(np.float32))
    xf = Tensor(rng.standard_normal((2, 24, 6)).astype(np.float32))
    cases = [(lambda: AttentionBlock(32, 4, 24, num_groups=8), (x, emb, xf)),
             (lambda: AttnBlock(32, num_groups=8), (x,))]
    for build, inputs in cases:
        fused, composed = _built_both_ways(build)
        assert fused.fused is not None and composed.fused is None
        a, b = fused(*inputs).asnumpy(), composed(*inputs).asnumpy()
        assert np.abs(b - x.asnumpy()).max() > 0.05      # the attention term is not negligible
        assert np.abs(a - b).max() <= 1e-5, type(fused).__name__


def test_the_unet_gives_the_same_output_with_and_without_it(ms_mode, fused_lib):
    from mind_diffusion.ldm.unet import CrossAttention, LDMUNet

    cfg = dict(in_channels=4, out_channels=4, model_channels=32, attention_resolutions=(1, 2),
               num_res_blocks=1, channel_mult=(1, 2), num_heads=2, context_dim=24, num_groups=8,
               transformer_depth=1)
    fused, composed = _built_both_ways(lambda: LDMUNet(**cfg))
    cells = lambda net: [c for _, c in net.cells_and_names() if isinstance(c, CrossAttention)]  # noqa: E731
    assert cells(fused) and all(c.fused is not None for c in cells(fused))
    assert all(c.fused is None for c in cells(composed))
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((2, 4, 16, 16)).astype(np.float32))
    ctx = Tensor(rng.standard_normal((2, 7, 24)).astype(np.float32))
    t = Tensor(np.array([10, 700], np.int32))
    a, b = fused(x, t, ctx).asnumpy(), composed(x, t, ctx).asnumpy()
    assert np.abs(b).max() > 0.1
    assert np.abs(a - b).max() <= 1e-5


def test_switch_off_missing_compiler_and_the_build_cache(tmp_path, monkeypatch, capsys, fused_lib):
    monkeypatch.setenv(cpu_attention.ENV_CACHE, str(tmp_path / "kernels"))
    saved = dict(cpu_attention._state)
    try:
        # a fresh build lands in the cache folder under one key, with no temporary file left
        cpu_attention._state.clear()
        lib = cpu_attention.library()
        assert lib is not None and lib.is_file() and lib.parent.parent == tmp_path / "kernels"
        assert [p.name for p in lib.parent.iterdir()] == ["attention_cpu.so"]
        assert "MS_CUSTOM_AOT_WHITE_LIST" not in os.environ     # MindSpore checks nothing when unset
        assert cpu_attention.key_part() == f"fused:{lib.parent.name}"
        # a second process (a cleared state) finds the built file and does not rebuild it
        mtime = lib.stat().st_mtime_ns
        cpu_attention._state.clear()
        assert cpu_attention.library() == lib and lib.stat().st_mtime_ns == mtime

        # no compiler: the composed path, one note that says why and what to do
        cpu_attention._state.clear()
        monkeypatch.setenv("CXX", str(tmp_path / "no-such-g++"))
        monkeypatch.setenv(cpu_attention.ENV_CACHE, str(tmp_path / "other"))
        assert cpu_attention.fused_attention_op() is None
        assert cpu_attention.fused_attention_op() is None
        err = capsys.readouterr().err
        assert err.count("note: attention uses the composed MindSpore kernels") == 1
        assert "no C++ compiler (install g++ or set CXX)" in err
        assert cpu_attention.key_part() == "composed"

        # MindSpore's white list (the user's setting) is respected: a kernel outside it is not used
        cpu_attention._state.clear()
        monkeypatch.delenv("CXX")
        monkeypatch.setenv(cpu_attention.ENV_CACHE, str(tmp_path / "kernels"))
        monkeypatch.setenv("MS_CUSTOM_AOT_WHITE_LIST", str(tmp_path / "elsewhere"))
        assert cpu_attention.fused_attention_op() is None
        err = capsys.readouterr().err
        assert f"MS_CUSTOM_AOT_WHITE_LIST={tmp_path / 'elsewhere'} does not hold the kernel folder" in err
        assert f"set {cpu_attention.ENV_CACHE} to a folder inside it" in err
        cpu_attention._state.clear()
        monkeypatch.setenv("MS_CUSTOM_AOT_WHITE_LIST", str(tmp_path))
        op = cpu_attention.fused_attention_op()
        assert op is not None
        one = Tensor(np.ones((1, 3, 1, 4), np.float32))
        assert np.allclose(op(one, one, one).asnumpy(), 1.0)
        monkeypatch.delenv("MS_CUSTOM_AOT_WHITE_LIST")

        # switched off: no note, composed
        cpu_attention._state.clear()
        monkeypatch.setenv(cpu_attention.ENV_SWITCH, "off")
        assert cpu_attention.fused_attention_op() is None
        assert capsys.readouterr().err == ""
        assert cpu_attention.key_part() == "composed"
    finally:
        cpu_attention._state.clear()
        cpu_attention._state.update(saved)


def test_the_compile_cache_key_names_the_attention_path(composed_attention):
    from mind_diffusion import compile_cache

    parts = compile_cache.key_parts(device_target="CPU", mode="graph", precision="float32",
                                    script_key={"x": 1})
    assert parts["attention"] == "composed"
    assert "attention" not in compile_cache.key_parts(device_target="GPU", mode="graph",
                                                      precision="float16", script_key={"x": 1})


def test_other_devices_never_build_the_kernels(monkeypatch, capsys):
    """On GPU or Ascend the kernel modules answer "not used" without building their libraries
    (no compiler run at start-up) and without a note; on the CPU device they build them."""
    import mindspore as ms

    from mind_diffusion import cpu_gemm

    real_get = ms.get_context
    for module in (cpu_attention, cpu_gemm):
        saved = dict(module._state)
        built = []

        def fake_build(module=module):
            built.append(module.__name__)
            return None, "no library in this test"

        monkeypatch.setattr(module, "_build", fake_build)
        try:
            module._state.clear()
            for device in ("GPU", "Ascend"):
                monkeypatch.setattr(ms, "get_context",
                                    lambda key, device=device: device if key == "device_target" else real_get(key))
                assert module.enabled() is False
            assert built == [] and "lib" not in module._state
            assert capsys.readouterr().err == ""
            # the CPU device builds (here: fails to, and says so once)
            monkeypatch.setattr(ms, "get_context", real_get)
            assert module.enabled() is False and module.enabled() is False
            assert built == [module.__name__]
            assert capsys.readouterr().err.count("no library in this test") == 1
        finally:
            monkeypatch.setattr(ms, "get_context", real_get)
            module._state.clear()
            module._state.update(saved)

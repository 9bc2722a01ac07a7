"""LoRA layers (mind_diffusion.nn.lora): MindPet names and init, injection into the LDM UNet with
the base names unchanged, trainable selection, merge / unmerge against the closed form
W + alpha/rank * B A, graph and pynative agreement."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mind_diffusion.checkpoint.io import load_strict
from mind_diffusion.ldm.unet import LDMUNet, SpatialTransformer
from mind_diffusion.nn.lora import (
    UNET_ATTN_TARGETS,
    UNET_CONV_TARGETS,
    UNET_FF_TARGETS,
    UNET_PROJ_TARGETS,
    LoRAConv2d,
    LoRADense,
    inject_lora,
    lora_layers,
    lora_parameters,
    lora_state_dict,
    mark_only_lora_trainable,
    merge_lora,
    remove_lora,
    unmerge_lora,
)
from ldm_tiny import randomize

# a one-level UNet: every LoRA-able kind of layer, cheap to compile
MINI = {"model_channels": 16, "channel_mult": (1,), "num_res_blocks": 1, "attention_resolutions": (1,),
        "num_heads": 2, "context_dim": 12, "num_groups": 8}
ALL_TARGETS = UNET_ATTN_TARGETS + UNET_FF_TARGETS + UNET_PROJ_TARGETS


def _randomize_lora(net, seed=3, std=0.3):
    rng = np.random.default_rng(seed)
    for p in lora_parameters(net):
        p.set_data(Tensor((std * rng.standard_normal(p.shape)).astype(np.float32)))


def test_injection_names_shapes_init_and_strict_base_load():
    base = randomize(LDMUNet(**MINI), seed=0)
    base_state = {p.name: p.asnumpy() for p in base.get_parameters()}
    net = LDMUNet(enable_lora=True, lora_rank=3, lora_alpha=6, **MINI)
    names = [p.name for p in net.get_parameters()]
    lora = [n for n in names if ".tk_delta_lora_" in n]
    assert [n for n in names if n not in lora] == list(base_state)  # base names and order unchanged
    # 1 transformer block x 2 attentions x 4 projections x (A, B), in input, middle and output blocks
    n_blocks = sum(1 for n in base_state if n.endswith("attn1.to_q.weight"))
    assert len(lora) == n_blocks * 2 * 4 * 2
    params = {p.name: p for p in net.get_parameters()}
    for n in lora:
        layer = n.rsplit(".", 1)[0]
        w = params[layer + ".weight"]
        assert params[n].dtype == ms.float32
        if n.endswith("tk_delta_lora_a"):
            assert tuple(params[n].shape) == (3, w.shape[1])
            a = params[n].asnumpy()
            assert 0 < np.abs(a).max() <= 1 / math.sqrt(w.shape[1])   # HeUniform(sqrt 5) bound
        else:
            assert tuple(params[n].shape) == (w.shape[0], 3)
            assert not params[n].asnumpy().any()                       # B starts at zero
    attn2_k = [n for n in lora if "attn2.to_k.tk_delta_lora_a" in n]
    assert attn2_k and tuple(params[attn2_k[0]].shape) == (3, 12)  # context_dim in, as [4, 768] in Wukong
    layer = next(iter(lora_layers(net).values()))
    assert isinstance(layer, LoRADense) and layer.scaling == 2.0
    # a base checkpoint loads strictly when the LoRA tensors are declared optional
    report = load_strict(net, base_state, allow_missing=lora)
    assert report.loaded == len(base_state)
    # a network without LoRA refuses a LoRA checkpoint's extra names
    with pytest.raises(Exception, match="unexpected"):
        load_strict(base, {**base_state, lora[0]: params[lora[0]].asnumpy()})


def test_trainable_selection_and_bad_arguments():
    net = LDMUNet(**MINI)
    with pytest.raises(ValueError, match="no LoRA layers"):
        mark_only_lora_trainable(net)
    for rank in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="rank must be a positive integer"):
            inject_lora(net, rank=rank)
    with pytest.raises(ValueError, match="alpha"):
        inject_lora(net, rank=4, alpha=0)
    with pytest.raises(ValueError, match="matches the LoRA targets"):
        inject_lora(net, targets=("to_z",))
    with pytest.raises(ValueError, match="Dense layers and 2-D convolutions"):
        inject_lora(net, targets=("in_layers_norm",))
    with pytest.raises(ValueError, match="Dense layers and 2-D convolutions"):
        inject_lora(nn.SequentialCell([nn.Conv2d(4, 4, 3, group=2)]), targets=("0",))
    wrapped = inject_lora(net, 4, 4, ALL_TARGETS)
    assert inject_lora(net, 4, 4, ALL_TARGETS) == []  # already wrapped: unchanged
    assert any(isinstance(c, LoRAConv2d) for c in lora_layers(net).values())
    trainable = mark_only_lora_trainable(net)
    assert len(trainable) == 2 * len(wrapped)
    assert {p.name for p in net.trainable_params()} == {p.name for p in trainable}
    assert set(lora_state_dict(net)) == {p.name for p in trainable}


def _transformer_inputs(seed=1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 16, 4, 4)).astype(np.float32)
    ctx = rng.standard_normal((2, 5, 12)).astype(np.float32)
    return Tensor(x), Tensor(ctx)


def _lora_transformer():
    net = randomize(SpatialTransformer(16, 2, 8, 1, 12, num_groups=8, gelu="exact"), seed=2)
    net.set_train(False)
    return net


def test_merge_unmerge_closed_form_and_graph_mode():
    """Pynative: fresh LoRA = base bit for bit; LoRA output = closed form W + alpha/rank * B A;
    merged = closed form; unmerge restores W to <= 1e-6; removal restores the base. Graph mode:
    the same LoRA and merged outputs (the compile key is renewed at each change)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    x, ctx = _transformer_inputs()
    emb = Tensor(np.zeros((2, 4), np.float32))
    net = _lora_transformer()
    y_base = net(x, emb, ctx).asnumpy()
    inject_lora(net, rank=4, alpha=2, targets=ALL_TARGETS)
    assert np.array_equal(net(x, emb, ctx).asnumpy(), y_base)  # B = 0: no change
    _randomize_lora(net)
    w0 = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    y_lora = net(x, emb, ctx).asnumpy()
    assert np.abs(y_lora - y_base).max() > 0.1
    ref = _lora_transformer()
    ref_params = {p.name: p for p in ref.get_parameters()}
    for path in lora_layers(net):
        w = ref_params[path + ".weight"]
        delta = 0.5 * (w0[path + ".tk_delta_lora_b"].astype(np.float64) @ w0[path + ".tk_delta_lora_a"])
        w.set_data(Tensor((w.asnumpy() + delta.reshape(w.shape)).astype(np.float32)))
    y_ref = ref(x, emb, ctx).asnumpy()
    scale = np.abs(y_ref).max()
    assert np.abs(y_lora - y_ref).max() <= 1e-5 * scale
    assert merge_lora(net) == len(lora_layers(net))
    y_merged = net(x, emb, ctx).asnumpy()
    assert np.abs(y_merged - y_ref).max() <= 1e-6 * scale
    assert merge_lora(net) == 0  # merging twice is a no-op
    assert unmerge_lora(net) == len(lora_layers(net))
    assert max(np.abs(p.asnumpy() - w0[p.name]).max() for p in net.get_parameters()) <= 1e-6
    assert np.abs(net(x, emb, ctx).asnumpy() - y_lora).max() <= 1e-5 * scale
    remove_lora(net)
    assert not lora_layers(net) and not lora_parameters(net)
    assert [p.name for p in net.get_parameters()] == [p.name for p in ref.get_parameters()]
    assert np.abs(net(x, emb, ctx).asnumpy() - y_base).max() <= 1e-5 * scale

    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        g = _lora_transformer()
        inject_lora(g, rank=4, alpha=2, targets=ALL_TARGETS)
        for p in g.get_parameters():
            p.set_data(Tensor(w0[p.name]))
        g_lora = g(x, emb, ctx).asnumpy()
        merge_lora(g)
        g_merged = g(x, emb, ctx).asnumpy()  # a stale graph would still add the branch
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    assert np.abs(g_lora - y_lora).max() <= 1e-5 * scale
    assert np.abs(g_merged - y_merged).max() <= 1e-5 * scale


def test_original_lora_config_keys():
    """configs/wukong/v1-inference-chinese-lora.yaml carries the original's keys; the defaults
    keep LoRA off."""
    from pathlib import Path

    from mind_diffusion.config import load_config
    from mind_diffusion.ldm.config import ldm_config_defaults

    root = Path(__file__).resolve().parents[1]
    lora = load_config(root / "configs/wukong/v1-inference-chinese-lora.yaml", (), ldm_config_defaults())
    plain = load_config(root / "configs/wukong/v1-inference-chinese.yaml", (), ldm_config_defaults())
    assert (lora.model.unet.enable_lora, lora.model.unet.lora_rank, lora.model.unet.lora_alpha) == (True, 4, 4)
    assert plain.model.unet.enable_lora is False and plain.model.text_encoder.enable_lora is False
    assert {k: v for k, v in lora.model.unet.items() if "lora" not in k} == \
        {k: v for k, v in plain.model.unet.items() if "lora" not in k}


def test_wrapped_dense_keeps_parameter_objects():
    dense = nn.Dense(6, 5)
    layer = LoRADense.from_dense(dense, 2, 2)
    assert layer.weight is dense.weight and layer.bias is dense.bias
    back = layer.to_base()
    assert back.weight is dense.weight and isinstance(back, nn.Dense) and not isinstance(back, LoRADense)
    # the compute dtype set by the precision policy (to_float) carries over both ways
    holder = nn.SequentialCell([nn.Dense(6, 5).to_float(ms.float16)])
    inject_lora(holder, 2, 2, targets=("0",))
    assert isinstance(holder[0], LoRADense) and holder[0].get_flags().get("fp16")
    remove_lora(holder)
    assert not isinstance(holder[0], LoRADense) and holder[0].get_flags().get("fp16")


def _conv2d_ref(x, w, b, stride, pad, dilation=1):
    """float64 NCHW cross-correlation with zero padding (pad: top, bottom, left, right)."""
    x = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad[0], pad[1]), (pad[2], pad[3])))
    o, _, kh, kw = w.shape
    h_out = (x.shape[2] - dilation * (kh - 1) - 1) // stride + 1
    w_out = (x.shape[3] - dilation * (kw - 1) - 1) // stride + 1
    y = np.zeros((x.shape[0], o, h_out, w_out))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dilation: i * dilation + stride * (h_out - 1) + 1: stride,
                      j * dilation: j * dilation + stride * (w_out - 1) + 1: stride]
            y += np.einsum("bchw,oc->bohw", patch, w[:, :, i, j].astype(np.float64))
    return y + (0 if b is None else b.reshape(1, -1, 1, 1))


@pytest.mark.parametrize("mode", [ms.PYNATIVE_MODE, ms.GRAPH_MODE])
def test_conv_lora_closed_form_strides_padding_both_modes(mode):
    """LoRA on k x k convolutions (kohya's LoCon layout: a rank-r conv with the base layer's kernel,
    stride, padding and dilation, then 1x1 to out): output = conv(x, W + alpha/r * (B A).reshape(W))
    in float64, for a 3x3 pad 1 (the ResBlocks'), a 3x3 stride 2 (downsampling), a 3x3 "same"
    dilation 2 and a 1x1 layer; merge / unmerge exact; graph mode = pynative."""
    ms.set_context(mode=mode)
    try:
        rng = np.random.default_rng(7)
        x = rng.standard_normal((2, 6, 9, 9)).astype(np.float32)
        cases = [(dict(kernel_size=3, stride=1, pad_mode="pad", padding=1, has_bias=True), (1, 1, 1, 1), 1, 1),
                 (dict(kernel_size=3, stride=2, pad_mode="pad", padding=1, has_bias=False), (1, 1, 1, 1), 2, 1),
                 (dict(kernel_size=3, stride=1, pad_mode="same", dilation=2, has_bias=True), (2, 2, 2, 2), 1, 2),
                 (dict(kernel_size=1, has_bias=True, pad_mode="valid"), (0, 0, 0, 0), 1, 1)]
        for kw, pad, stride, dil in cases:
            net = nn.SequentialCell([nn.Conv2d(6, 5, **kw)])
            w = (0.3 * rng.standard_normal(net[0].weight.shape)).astype(np.float32)
            net[0].weight.set_data(Tensor(w))
            b = None
            if net[0].has_bias:
                b = rng.standard_normal(5).astype(np.float32)
                net[0].bias.set_data(Tensor(b))
            y_base = net(Tensor(x)).asnumpy()
            assert inject_lora(net, rank=3, alpha=6, targets=("0",)) == ["0"]
            layer = net[0]
            assert isinstance(layer, LoRAConv2d)
            assert tuple(layer.tk_delta_lora_a.shape) == (3, 6 * int(np.prod(w.shape[2:])))
            assert tuple(layer.tk_delta_lora_b.shape) == (5, 3)
            assert np.array_equal(net(Tensor(x)).asnumpy(), y_base)      # B = 0: unchanged
            _randomize_lora(net, seed=int(stride * 10 + dil))
            a = layer.tk_delta_lora_a.asnumpy().astype(np.float64)
            bb = layer.tk_delta_lora_b.asnumpy().astype(np.float64)
            w_eff = w.astype(np.float64) + 2.0 * (bb @ a).reshape(w.shape)
            ref = _conv2d_ref(x, w_eff, b, stride, pad, dil)
            y = net(Tensor(x)).asnumpy()
            assert y.shape == ref.shape
            scale = np.abs(ref).max()
            assert np.abs(y - ref).max() <= 1e-5 * scale, kw
            assert np.abs(y - y_base).max() > 0.05 * scale
            merge_lora(net)
            assert np.abs(net(Tensor(x)).asnumpy() - ref).max() <= 1e-5 * scale
            unmerge_lora(net)
            assert np.abs(net[0].weight.asnumpy() - w).max() <= 1e-6
            remove_lora(net)
            assert type(net[0]) is nn.Conv2d and np.abs(net[0].weight.asnumpy() - w).max() <= 1e-6
            assert np.abs(net(Tensor(x)).asnumpy() - y_base).max() <= 1e-5 * scale
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)


def test_conv_targets_in_the_ldm_unet():
    """``UNET_CONV_TARGETS`` wrap exactly the ResBlocks' two 3x3 convolutions; the base names stay."""
    net = LDMUNet(**MINI)
    base = [p.name for p in net.get_parameters()]
    wrapped = inject_lora(net, 2, 2, UNET_CONV_TARGETS)
    n_res = sum(1 for n in base if n.endswith("in_layers_conv.conv.weight"))
    assert n_res and len(wrapped) == 2 * n_res
    assert all(isinstance(lora_layers(net)[p], LoRAConv2d) for p in wrapped)
    assert [p.name for p in net.get_parameters() if ".tk_delta_lora_" not in p.name] == base

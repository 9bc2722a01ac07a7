"""DDPM UNet: parameter counts, graph/pynative agreement, and parity with an independent PyTorch
implementation (bench/torch_ddpm_unet.py) for the forward pass and one Adam step."""
import os

import numpy as np
import pytest

import mind_diffusion  # noqa: F401  (env defaults before mindspore)
import mindspore as ms
from mindspore import Tensor, nn

from mind_diffusion.ddpm.unet import DDPMUNet, build_ddpm_unet, ddpm_unet_defaults
from mind_diffusion.nn.layers import count_params

TINY = dict(img_channels=3, base_channels=32, channel_mults=(1, 2), num_res_blocks=1, time_emb_dim=64,
            num_groups=8, attention_resolutions=(1,), num_classes=10, dropout=0.0)

# MindSpore's nn.Adam adds eps to sqrt(v_t) *before* the bias correction (Kingma & Ba's
# "efficient" form, as in TensorFlow):  w -= lr sqrt(1-b2^t)/(1-b1^t) m_t / (sqrt(v_t) + eps);
# torch.optim.Adam adds it after:       w -= lr/(1-b1^t) m_t / (sqrt(v_t/(1-b2^t)) + eps).
# The two agree only with eps_torch(t) = eps_ms / sqrt(1 - b2^t), i.e. a step-dependent eps; for
# the single step compared below that is eps_ms / sqrt(1 - b2). See test_mindspore_adam_eps_convention.
B1, B2, EPS, LR = 0.9, 0.999, 1e-8, 1e-3

# Pin the device before this module runs any kernel: ``mindspore.set_device`` raises once the
# runtime is initialised, which would make conftest's ``ms_mode`` fixture (it calls set_device)
# error in every later test. A repeated call with the same target is a no-op.
try:
    ms.set_device(os.environ.get("MD_TEST_DEVICE", "CPU"))
except RuntimeError:   # runtime already started by an earlier module without set_device
    pass


def _inputs(seed=0, batch=4, channels=3, size=16):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, channels, size, size)).astype(np.float32)
    t = np.array([0, 17, 500, 999, 250, 3, 64, 731][:batch], np.int32)
    y = np.array([0, 3, 9, 3, 5, 1, 7, 2][:batch], np.int32)
    return x, t, y


def _randomise(net, seed=0):
    """Make the weights that start trivial (GroupNorm 1/0, zero-initialised convs) random."""
    rng = np.random.default_rng(seed)
    for p in net.get_parameters():
        a = p.asnumpy()
        if p.name.endswith(".gamma"):
            a = 1.0 + 0.3 * rng.standard_normal(a.shape)
        elif p.name.endswith(".beta"):
            a = 0.3 * rng.standard_normal(a.shape)
        elif not np.any(a):
            fan_in = int(np.prod(a.shape[1:])) if a.ndim > 1 else a.shape[0]
            a = rng.standard_normal(a.shape) / np.sqrt(fan_in)
        else:
            continue
        p.set_data(Tensor(a.astype(np.float32)))


# --------------------------------------------------------------------------- parameter counts

def test_param_counts_cifar10():
    assert count_params(build_ddpm_unet({})) == 35_746_307
    cfg = ddpm_unet_defaults()
    cfg["num_classes"] = 10
    assert count_params(DDPMUNet(**cfg)) == 35_796_227


# --------------------------------------------------------------------------- graph vs pynative

def test_graph_matches_pynative():
    x, t, y = _inputs()
    outs, weights = {}, {}
    try:
        for mode in (ms.GRAPH_MODE, ms.PYNATIVE_MODE):
            ms.set_context(mode=mode)
            ms.set_seed(1234)
            net = DDPMUNet(**TINY)
            net.set_train(False)
            weights[mode] = {p.name: p.asnumpy() for p in net.get_parameters()}
            outs[mode] = net(Tensor(x), Tensor(t), Tensor(y)).asnumpy()
    finally:
        ms.set_context(mode=ms.PYNATIVE_MODE)
    for name, w in weights[ms.GRAPH_MODE].items():   # same seed -> same initial weights
        np.testing.assert_array_equal(w, weights[ms.PYNATIVE_MODE][name], err_msg=name)
    assert outs[ms.GRAPH_MODE].shape == x.shape
    assert np.all(np.isfinite(outs[ms.GRAPH_MODE]))
    np.testing.assert_allclose(outs[ms.GRAPH_MODE], outs[ms.PYNATIVE_MODE], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- torch parity

def _torch_pair(cfg, seed=0):
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: no reference to compare with")
    from bench.torch_ddpm_unet import TorchDDPMUNet, load_from_mindspore

    torch.manual_seed(seed)
    ms.set_seed(seed)
    net = DDPMUNet(**cfg)
    _randomise(net, seed)
    ref = TorchDDPMUNet(**cfg)
    mapping = load_from_mindspore(ref, net)
    return torch, net, ref, mapping


def test_load_from_mindspore_checks_names():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed: no reference to compare with")
    from bench.torch_ddpm_unet import TorchDDPMUNet, load_from_mindspore

    cfg = dict(TINY, zero_init=True)
    net = DDPMUNet(**cfg)
    state = {p.name: p.asnumpy() for p in net.get_parameters()}
    ref = TorchDDPMUNet(**cfg)
    mapping = load_from_mindspore(ref, state)
    assert len(mapping) == len(state) == len(list(ref.parameters()))
    assert mapping["time_mlp.0.weight"] == "time_mlp.1.weight"
    assert mapping["ups.3.class_bias.embedding_table"] == "ups.3.class_bias.weight"
    assert mapping["downs.0.norm_1.gamma"] == "downs.0.norm_1.weight"
    assert mapping["ups.2.upsample.conv.weight"] == "ups.2.upsample.1.weight"
    assert mapping["downs.0.conv_2.weight"] == "downs.0.conv_2.1.weight"
    with pytest.raises(AssertionError):        # a parameter left out on the MindSpore side
        load_from_mindspore(ref, {k: v for k, v in state.items() if k != "out_conv.bias"})
    with pytest.raises(AssertionError):        # wrong shape
        load_from_mindspore(ref, dict(state, **{"out_conv.bias": np.zeros(4, np.float32)}))
    with pytest.raises(AssertionError):        # unknown extra parameter
        load_from_mindspore(ref, dict(state, **{"extra.gamma": np.zeros(4, np.float32)}))
    del torch


@pytest.mark.parametrize("cfg", [dict(TINY, zero_init=True), dict(TINY, num_classes=None)],
                         ids=["conditional", "unconditional"])
def test_forward_matches_torch(ms_mode, cfg):
    torch, net, ref, _ = _torch_pair(cfg)
    net.set_train(False)
    ref.eval()
    x, t, y = _inputs()
    conditional = cfg["num_classes"] is not None
    if conditional:
        out_ms = net(Tensor(x), Tensor(t), Tensor(y)).asnumpy()
    else:
        out_ms = net(Tensor(x), Tensor(t)).asnumpy()
    with torch.no_grad():
        out_t = ref(torch.from_numpy(x), torch.from_numpy(t).long(),
                    torch.from_numpy(y).long() if conditional else None).numpy()
    assert np.abs(out_t).max() > 0.1          # non-trivial output
    np.testing.assert_allclose(out_ms, out_t, rtol=0, atol=1e-4)


def test_mindspore_adam_eps_convention():
    """Pin down nn.Adam's update rule against numpy, and show it differs from torch's."""
    w0 = np.ones(4, np.float32)
    g = np.array([1e-7, 1e-5, 1e-3, -0.5], np.float32)
    p = ms.Parameter(Tensor(w0.copy()), name="w")
    opt = nn.Adam([p], learning_rate=LR, beta1=B1, beta2=B2, eps=EPS)

    def reference(steps, torch_style):
        w, m, v = w0.astype(np.float64), np.zeros(4), np.zeros(4)
        gd = g.astype(np.float64)
        for s in range(1, steps + 1):
            m = B1 * m + (1 - B1) * gd
            v = B2 * v + (1 - B2) * gd * gd
            if torch_style:
                w = w - LR / (1 - B1 ** s) * m / (np.sqrt(v / (1 - B2 ** s)) + EPS)
            else:
                w = w - LR * np.sqrt(1 - B2 ** s) / (1 - B1 ** s) * m / (np.sqrt(v) + EPS)
        return w

    for step in (1, 2, 3):
        opt((Tensor(g),))
        got = p.asnumpy()
        np.testing.assert_allclose(got, reference(step, torch_style=False), rtol=0, atol=2e-7)
        # torch's convention gives a visibly different update for gradients near eps/sqrt(1-b2^t)
        assert np.abs(got - reference(step, torch_style=True)).max() > 1e-4


def test_adam_step_matches_torch(graph_mode):
    from mind_diffusion.train.objectives import NoisePredictionLoss
    from mind_diffusion.train.step import TrainStep

    torch, net, ref, mapping = _torch_pair(dict(TINY, zero_init=True), seed=3)
    before = {p.name: p.asnumpy().copy() for p in net.get_parameters()}
    rng = np.random.default_rng(7)
    x0, _, y = _inputs(seed=5)
    x0 = np.tanh(x0)
    t = rng.integers(0, 1000, size=x0.shape[0]).astype(np.int32)
    noise = rng.standard_normal(x0.shape).astype(np.float32)
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    abar = np.cumprod(1.0 - betas)

    # MindSpore: the library's loss cell and compiled train step.
    net.set_train(True)
    loss_net = NoisePredictionLoss(net, abar, conditional=True)
    step = TrainStep(loss_net, nn.Adam(net.trainable_params(), learning_rate=LR, beta1=B1, beta2=B2, eps=EPS))
    loss_ms, finite, _ = step(Tensor(x0), Tensor(y), Tensor(t), Tensor(noise))
    assert bool(finite.asnumpy())
    after = {p.name: p.asnumpy() for p in net.get_parameters()}

    # torch: same loss by hand; eps converted to torch's convention for step 1 (see top of file).
    ref.train()
    opt = torch.optim.Adam(ref.parameters(), lr=LR, betas=(B1, B2), eps=EPS / np.sqrt(1.0 - B2))
    sa = torch.from_numpy(np.sqrt(abar).astype(np.float32))
    sb = torch.from_numpy(np.sqrt(1.0 - abar).astype(np.float32))
    tt = torch.from_numpy(t).long()
    x0_t, noise_t = torch.from_numpy(x0), torch.from_numpy(noise)
    x_t = sa[tt].view(-1, 1, 1, 1) * x0_t + sb[tt].view(-1, 1, 1, 1) * noise_t
    loss_t = ((ref(x_t, tt, torch.from_numpy(y).long()) - noise_t) ** 2).mean()
    opt.zero_grad()
    loss_t.backward()
    opt.step()
    after_t = {ms_name: p for ms_name, p in
               ((k, dict(ref.named_parameters())[v].detach().numpy()) for k, v in mapping.items())}

    np.testing.assert_allclose(float(loss_ms.asnumpy()), float(loss_t.item()), rtol=1e-5)
    moved = 0
    for name, w in after.items():
        np.testing.assert_allclose(w, after_t[name], rtol=0, atol=1e-5, err_msg=name)
        moved += int(np.any(w != before[name]))
    assert moved >= 0.9 * len(after)             # the step really updated the weights

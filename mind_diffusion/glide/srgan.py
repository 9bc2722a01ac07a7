"""Taichu-GLIDE's third stage, the x4 SRGAN generator (SRResNet-style, as in its
``model/glide_text2im/model/srgan.py``), parameter names as in ``srgan.ckpt`` (bare Generator names):

    conv1.0 Conv2d(3->64, k9, p4) , conv1.1 PReLU(64)  [slope param ``w``]
    trunk.N.{conv1, bn1, prelu, conv2, bn2}          N < num_blocks; out = x + bn2(conv2(prelu(bn1(conv1 x))))
    conv2.0 Conv2d(64->64, k3), conv2.1 PReLU(64)      global skip: conv1_out + conv2_out
    subpixel_conv.N.{conv Conv2d(64->256, k3), prelu PReLU(64)}   with DepthToSpace(2) between them
    conv3 Conv2d(64->3, k9, p4) -> tanh

BatchNorm runs in inference mode (moving statistics, eps 1e-5). The pixel shuffle is MindSpore's
``DepthToSpace`` (DCR order): ``out[c, 2h+i, 2w+j] = in[(2i+j) * C + c]`` (PyTorch's
``PixelShuffle`` reads ``in[4c + 2i + j]`` instead). Input (B,3,H,W) in [-1,1], fp32; output
(B,3,4H,4W) in [-1,1].
"""
from __future__ import annotations

import math

from mindspore import nn, ops

from ..nn.layers import conv2d

__all__ = ["SRGANGenerator", "depth_to_space_dcr"]


def depth_to_space_dcr(x, r: int = 2):
    """``ops.DepthToSpace(r)`` (DCR): out[b, c, r h + i, r w + j] = x[b, (r i + j) C + c, h, w]."""
    b, crr, h, w = x.shape
    c = crr // (r * r)
    y = x.reshape(b, r, r, c, h, w).transpose(0, 3, 4, 1, 5, 2)     # b, c, h, i, w, j
    return y.reshape(b, c, h * r, w * r)


def _bn(ch: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(ch, eps=1e-5)


class ResidualBlock(nn.Cell):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = conv2d(ch, ch, 3)
        self.bn1 = _bn(ch)
        self.prelu = nn.PReLU(ch)
        self.conv2 = conv2d(ch, ch, 3)
        self.bn2 = _bn(ch)

    def construct(self, x):
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class SubpixelConvBlock(nn.Cell):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = conv2d(ch, 4 * ch, 3)
        self.prelu = nn.PReLU(ch)

    def construct(self, x):
        return self.prelu(depth_to_space_dcr(self.conv(x), 2))


class SRGANGenerator(nn.Cell):
    """``construct(x (B,3,H,W)) -> (B,3,f H,f W)``, f = ``upscale_factor`` (a power of 2)."""

    def __init__(self, upscale_factor: int = 4, num_blocks: int = 16, channels: int = 64):
        super().__init__()
        if not isinstance(upscale_factor, int) or upscale_factor < 2 or upscale_factor & (upscale_factor - 1):
            raise ValueError(f"SRGAN: upscale_factor must be a power of 2 >= 2 (Taichu uses 4), got {upscale_factor!r}")
        for key, val in (("num_blocks", num_blocks), ("channels", channels)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"SRGAN: {key} must be a positive int, got {val!r}")
        self.upscale_factor = upscale_factor
        self.conv1 = nn.SequentialCell([conv2d(3, channels, 9), nn.PReLU(channels)])
        self.trunk = nn.SequentialCell([ResidualBlock(channels) for _ in range(num_blocks)])
        self.conv2 = nn.SequentialCell([conv2d(channels, channels, 3), nn.PReLU(channels)])
        self.subpixel_conv = nn.SequentialCell([SubpixelConvBlock(channels)
                                                for _ in range(int(math.log2(upscale_factor)))])
        self.conv3 = conv2d(channels, 3, 9)

    def construct(self, x):
        out1 = self.conv1(x)
        out = out1 + self.conv2(self.trunk(out1))
        return ops.tanh(self.conv3(self.subpixel_conv(out)))

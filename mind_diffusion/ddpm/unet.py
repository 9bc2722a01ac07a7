"""Class-conditional DDPM UNet (Ho et al. 2020 as ported by abarankab/DDPM).

Shape for CIFAR-10 (``ddpm_unet_defaults()``): 128 channels, mults (1,2,2,2), 2 ResBlocks per
level (3 on the up path), attention at level index 1 (16x16) and in the middle, dropout 0.1,
GroupNorm(32) + SiLU, sinusoidal time embedding (dim 128, divided by ``half``) -> 512-d MLP,
class conditioning as a learned per-ResBlock bias ``Embedding(num_classes, C_out)``.
Parameter count: 35,746,307 unconditional, 35,796,227 with 10 classes.
"""
from __future__ import annotations

from mindspore import nn, ops
from mindspore.common.initializer import Normal, initializer

from ..nn.dropout import KeyedDropout
from ..config import merge_overrides, to_plain
from ..nn.layers import GroupNorm, SinusoidalTimeEmbedding, SpatialSelfAttention, Upsample2x, conv2d, dense
from .config import ddpm_unet_defaults


class ResidualBlock(nn.Cell):
    """h = conv(act(GN(x))) + Linear(act(temb)) [+ Embedding(y)]; h = conv(drop(act(GN(h))));
    out = h + skip(x); then optional attention."""

    def __init__(self, in_ch, out_ch, time_emb_dim, num_classes, dropout, num_groups, attention,
                 zero_init=False):
        super().__init__()
        self.norm_1 = GroupNorm(num_groups, in_ch)
        self.conv_1 = conv2d(in_ch, out_ch, 3)
        self.time_bias = dense(time_emb_dim, out_ch)
        self.has_class = num_classes is not None
        if self.has_class:
            self.class_bias = nn.Embedding(num_classes, out_ch,
                                           embedding_table=initializer(Normal(1.0), [num_classes, out_ch]))
        self.norm_2 = GroupNorm(num_groups, out_ch)
        self.dropout = KeyedDropout(dropout) if dropout > 0 else nn.Identity()
        self.conv_2 = conv2d(out_ch, out_ch, 3, zero_init=zero_init)
        self.residual_connection = conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attention = SpatialSelfAttention(out_ch, num_groups, zero_init) if attention else nn.Identity()
        self.act = nn.SiLU()

    def construct(self, x, temb, y):
        h = self.conv_1(self.act(self.norm_1(x)))
        h = h + self.time_bias(self.act(temb))[:, :, None, None]
        if self.has_class:
            h = h + self.class_bias(y)[:, :, None, None]
        h = self.conv_2(self.dropout(self.act(self.norm_2(h))))
        return self.attention(h + self.residual_connection(x))


class Downsample(nn.Cell):
    def __init__(self, ch):
        super().__init__()
        self.downsample = conv2d(ch, ch, 3, stride=2, padding=1)

    def construct(self, x, temb, y):
        return self.downsample(x)


class Upsample(nn.Cell):
    def __init__(self, ch):
        super().__init__()
        self.upsample = Upsample2x(ch, with_conv=True)

    def construct(self, x, temb, y):
        return self.upsample(x)


class DDPMUNet(nn.Cell):
    """construct(x (B,C,H,W) in [-1,1], t (B,) int steps, y (B,) int32 labels or None) -> eps."""

    def __init__(self, img_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                 time_emb_dim=512, dropout=0.1, attention_resolutions=(1,), num_classes=None,
                 num_groups=32, zero_init=False):
        super().__init__()
        channel_mults = tuple(channel_mults)
        attention_resolutions = tuple(attention_resolutions)
        for idx in attention_resolutions:
            if not 0 <= idx < len(channel_mults):
                raise ValueError(f"attention_resolutions holds level indices into channel_mults "
                                 f"(0..{len(channel_mults) - 1}), got {idx}")
        for mult in channel_mults:
            if (base_channels * mult) % num_groups:
                raise ValueError(f"channels {base_channels * mult} not divisible by num_groups={num_groups}")
        self.num_classes = num_classes
        self.num_levels = len(channel_mults)
        self.time_embedding = SinusoidalTimeEmbedding(base_channels, shift=0)
        self.time_mlp = nn.SequentialCell(dense(base_channels, time_emb_dim), nn.SiLU(),
                                          dense(time_emb_dim, time_emb_dim))
        self.init_conv = conv2d(img_channels, base_channels, 3)
        blk = dict(time_emb_dim=time_emb_dim, num_classes=num_classes, dropout=dropout,
                   num_groups=num_groups, zero_init=zero_init)

        downs, chans, now = [], [base_channels], base_channels
        for i, mult in enumerate(channel_mults):
            out = base_channels * mult
            for _ in range(num_res_blocks):
                downs.append(ResidualBlock(now, out, attention=i in attention_resolutions, **blk))
                now = out
                chans.append(now)
            if i != len(channel_mults) - 1:
                downs.append(Downsample(now))
                chans.append(now)
        self.downs = nn.CellList(downs)
        self.mid = nn.CellList([ResidualBlock(now, now, attention=True, **blk),
                                ResidualBlock(now, now, attention=False, **blk)])
        ups, skip_index = [], []
        stack = list(range(len(chans)))  # indices of skip tensors, consumed from the end
        for i, mult in reversed(list(enumerate(channel_mults))):
            out = base_channels * mult
            for _ in range(num_res_blocks + 1):
                j = stack.pop()
                ups.append(ResidualBlock(chans[j] + now, out, attention=i in attention_resolutions, **blk))
                skip_index.append(j)
                now = out
            if i != 0:
                ups.append(Upsample(now))
                skip_index.append(-1)
        self.ups = nn.CellList(ups)
        self.skip_index = tuple(skip_index)  # graph mode: constant indices instead of list.pop()
        self.out_norm = GroupNorm(num_groups, base_channels)
        self.out_conv = conv2d(base_channels, img_channels, 3, zero_init=zero_init)
        self.act = nn.SiLU()
        self.concat = ops.Concat(axis=1)

    def construct(self, x, t, y=None):
        temb = self.time_mlp(self.time_embedding(t))
        h = self.init_conv(x)
        skips = [h]
        for layer in self.downs:
            h = layer(h, temb, y)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, temb, y)
        for idx, layer in enumerate(self.ups):
            if self.skip_index[idx] >= 0:
                h = self.concat((h, skips[self.skip_index[idx]]))
            h = layer(h, temb, y)
        return self.out_conv(self.act(self.out_norm(h)))


def build_ddpm_unet(cfg=None) -> DDPMUNet:
    """Build from ``ddpm_unet_defaults()`` overridden by ``cfg`` (a mapping, e.g. the ``model``
    section of a DDPM config, whose ``image_size`` is the data's and is skipped here); an unknown
    key or a wrong type raises ``ConfigError`` naming it."""
    params = {k: v for k, v in to_plain(cfg or {}).items() if k != "image_size"}
    return DDPMUNet(**merge_overrides(ddpm_unet_defaults(), params, "DDPM UNet"))

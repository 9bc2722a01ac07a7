"""The OpenAI / CompVis UNet skeleton that GLIDE's and the LDM's UNets share: the input blocks
(a first conv, then per level ``num_res_blocks`` ResBlocks each followed by attention at the
listed downsample factors, and a downsampler between levels), the middle block (ResBlock,
attention, ResBlock) and the output blocks (per level ``num_res_blocks + 1`` ResBlocks over the
concatenated skip, attention, and an upsampler closing every level but the last).

Each family passes its own cells as callables, so the parameter names stay those of its released
checkpoints (``input_blocks.<i>.<j>.*``, ``middle_block.<j>.*``, ``output_blocks.<i>.<j>.*``).
"""
from __future__ import annotations

from typing import Callable

from mindspore import nn, ops

from .dropout import KeyedDropout
from .layers import ConvNd


def dropout_cell(p: float) -> nn.Cell:
    """Dropout with masks keyed on (seed, step) once a trainer keys them (:mod:`.dropout`),
    ``nn.Dropout``'s before; an identity for ``p == 0``."""
    return KeyedDropout(p) if p > 0 else nn.Identity()


class EmbedSequential(nn.SequentialCell):
    """Children indexed 0, 1, ... (OpenAI / CompVis ``TimestepEmbedSequential``); each child is
    called as ``child(h, emb, cond)`` (cond: GLIDE's text tokens, the LDM's context)."""

    def construct(self, x, emb, cond):
        for cell in self.cell_list:
            x = cell(x, emb, cond)
        return x


class InputConv(ConvNd):
    """The first 3x3 conv (held as ``conv``) with the block signature ``(x, emb, cond)``."""

    def construct(self, x, emb, cond):
        return self.conv(x)


def build_unet_blocks(in_channels: int, model_channels: int, channel_mult, num_res_blocks: int,
                      attention_resolutions, *, res: Callable, attn: Callable, down: Callable,
                      up: Callable):
    """``(input_blocks, middle_block, output_blocks, out_ch)`` of the OpenAI UNet layout.

    ``res(in_ch, out_ch)`` builds a ResBlock, ``attn(ch, part)`` the attention cell of ``part``
    ('input', 'middle' or 'output'), ``down(ch)`` / ``up(ch)`` the resamplers; attention follows
    the ResBlocks at the downsample factors (1, 2, 4, ...) listed in ``attention_resolutions``.
    ``out_ch`` is the channel count the output blocks end with."""
    inputs = [EmbedSequential([InputConv(in_channels, model_channels, 3)])]
    chans = [model_channels]
    ch, ds = model_channels, 1
    for level, mult in enumerate(channel_mult):
        for _ in range(num_res_blocks):
            layers = [res(ch, model_channels * mult)]
            ch = model_channels * mult
            if ds in attention_resolutions:
                layers.append(attn(ch, "input"))
            inputs.append(EmbedSequential(layers))
            chans.append(ch)
        if level != len(channel_mult) - 1:
            inputs.append(EmbedSequential([down(ch)]))
            chans.append(ch)
            ds *= 2
    middle = EmbedSequential([res(ch, ch), attn(ch, "middle"), res(ch, ch)])
    outputs = []
    for level, mult in reversed(list(enumerate(channel_mult))):
        for i in range(num_res_blocks + 1):
            skip_ch = chans.pop()
            layers = [res(ch + skip_ch, model_channels * mult)]
            ch = model_channels * mult
            if ds in attention_resolutions:
                layers.append(attn(ch, "output"))
            if level and i == num_res_blocks:
                layers.append(up(ch))
                ds //= 2
            outputs.append(EmbedSequential(layers))
    return nn.CellList(inputs), middle, nn.CellList(outputs), ch


class UNetBlocksMixin:
    """For a UNet cell holding ``input_blocks``, ``middle_block``, ``output_blocks`` (from
    :func:`build_unet_blocks`) and ``num_inputs``: :meth:`run_blocks` is their forward pass."""

    def run_blocks(self, h, emb, cond):
        """The input blocks (keeping every output for the skips), the middle block, then the
        output blocks each over ``concat(h, skip)`` (the skip cast to h's dtype)."""
        hs = []
        for blk in self.input_blocks:
            h = blk(h, emb, cond)
            hs.append(h)
        h = self.middle_block(h, emb, cond)
        for i, blk in enumerate(self.output_blocks):
            skip = hs[self.num_inputs - 1 - i]
            h = ops.concat((h, ops.cast(skip, h.dtype)), axis=1)
            h = blk(h, emb, cond)
        return h

"""Independent PyTorch implementation of GLIDE's networks, used only as a test reference for
``mind_diffusion.glide``: the text transformer, the text-conditional UNet (base and upsampler)
and Taichu-GLIDE's SRGAN x4 generator.

Written from the spec (``glide.md`` §3, §5) in the PyTorch / OpenAI glide-text2im module layout,
so its ``state_dict`` keys are OpenAI's (``in_layers.0.weight``, ``out.2.weight``,
``token_embedding.weight``, 1-D attention convs ``[o, i, 1]``) and the weights from a MindSpore
net must go through the declared name map (``mind_diffusion.glide.checkpoint.openai_key``).
The SRGAN uses ``nn.PixelShuffle`` (CRD channel order), so its sub-pixel conv weights must be
permuted from MindSpore's DepthToSpace (DCR) order: :func:`srgan_state_from_mindspore`.

Quirk switches: ``gelu`` ('tanh' | 'exact'), ``ln_eps``; the SR resize is the legacy asymmetric
bilinear (``src = dst * in / out``, edge clamp), written out with explicit gathers.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------- helpers
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos(t f), sin(t f)], f_k = exp(-ln(max_period) k / half), fp32."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32)
    f = torch.exp(-math.log(max_period) * k / half)
    arg = t.to(torch.float32)[:, None] * f[None]
    return torch.cat([torch.cos(arg), torch.sin(arg)], dim=1)


def legacy_bilinear(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """TF1 / MindSpore legacy bilinear: src = dst * in / out (no half-pixel centres), edge clamp."""
    in_h, in_w = x.shape[-2:]

    def axis(n_out, n_in):
        src = torch.arange(n_out, dtype=torch.float64) * (n_in / n_out)
        i0 = torch.floor(src).long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        frac = (src - i0.double()).to(x.dtype)
        return i0, i1, frac

    y0, y1, fy = axis(out_h, in_h)
    x0, x1, fx = axis(out_w, in_w)
    top = x[..., y0, :]
    bot = x[..., y1, :]
    fy = fy[:, None]
    rows = top + (bot - top) * fy
    left = rows[..., x0]
    right = rows[..., x1]
    return left + (right - left) * fx


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32) computed in fp32, optionally followed by SiLU (OpenAI ``normalization``)."""

    def __init__(self, channels: int, swish: bool, num_groups: int = 32):
        super().__init__(num_groups, channels, eps=1e-5)
        self.swish = swish

    def forward(self, x):
        y = super().forward(x.float())
        if self.swish:
            y = F.silu(y)
        return y.to(x.dtype)


class GELU(nn.Module):
    def __init__(self, mode: str):
        super().__init__()
        assert mode in ("tanh", "exact")
        self.mode = mode

    def forward(self, x):
        return F.gelu(x, approximate="tanh" if self.mode == "tanh" else "none")


# ----------------------------------------------------------------------------- text transformer
class XfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.c_qkv = nn.Linear(width, 3 * width)
        self.c_proj = nn.Linear(width, width)

    def forward(self, x):
        b, n, w = x.shape
        d = w // self.heads
        qkv = self.c_qkv(x).view(b, n, self.heads, 3 * d)
        q, k, v = qkv[..., :d], qkv[..., d:2 * d], qkv[..., 2 * d:]
        s = 1.0 / math.sqrt(math.sqrt(d))
        logits = torch.einsum("bqhd,bkhd->bhqk", q * s, k * s)
        p = torch.softmax(logits.float(), dim=-1).to(logits.dtype)
        return self.c_proj(torch.einsum("bhqk,bkhd->bqhd", p, v).reshape(b, n, w))


class XfMLP(nn.Module):
    def __init__(self, width: int, gelu: str):
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width)
        self.gelu = GELU(gelu)
        self.c_proj = nn.Linear(4 * width, width)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class XfBlock(nn.Module):
    def __init__(self, width: int, heads: int, gelu: str, ln_eps: float):
        super().__init__()
        self.attn = XfAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=ln_eps)
        self.mlp = XfMLP(width, gelu)
        self.ln_2 = nn.LayerNorm(width, eps=ln_eps)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class XfTransformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, gelu: str, ln_eps: float):
        super().__init__()
        self.resblocks = nn.ModuleList([XfBlock(width, heads, gelu, ln_eps) for _ in range(layers)])

    def forward(self, x):
        for blk in self.resblocks:
            x = blk(x)
        return x


def _attach_text(module: nn.Module, text_ctx, xf_width, xf_layers, xf_heads, n_vocab, proj_dim, gelu, ln_eps):
    module.token_embedding = nn.Embedding(n_vocab, xf_width)
    module.positional_embedding = nn.Parameter(torch.randn(text_ctx, xf_width) * 0.01)
    module.padding_embedding = nn.Parameter(torch.randn(text_ctx, xf_width) * 0.01)
    module.transformer = XfTransformer(xf_width, xf_layers, xf_heads, gelu, ln_eps)
    module.final_ln = nn.LayerNorm(xf_width, eps=ln_eps)
    module.transformer_proj = nn.Linear(xf_width, proj_dim)


def _text_forward(module: nn.Module, tokens: torch.Tensor, mask: torch.Tensor):
    x = module.token_embedding(tokens.long()) + module.positional_embedding[None]
    x = torch.where(mask.bool()[..., None], x, module.padding_embedding[None])
    x = module.final_ln(module.transformer(x))
    return module.transformer_proj(x[:, -1]), x.permute(0, 2, 1)


class TextTransformerRef(nn.Module):
    """forward(tokens, mask) -> (xf_proj, xf_out (B, W, L))."""

    def __init__(self, text_ctx=128, xf_width=512, xf_layers=16, xf_heads=8, n_vocab=50001,
                 proj_dim=768, gelu="tanh", ln_eps=1e-7):
        super().__init__()
        _attach_text(self, text_ctx, xf_width, xf_layers, xf_heads, n_vocab, proj_dim, gelu, ln_eps)

    def forward(self, tokens, mask):
        return _text_forward(self, tokens, mask)


# ----------------------------------------------------------------------------- UNet
class ResBlockRef(nn.Module):
    def __init__(self, ch, emb_ch, out_ch, dropout, up=False, down=False, num_groups=32):
        super().__init__()
        self.up, self.down = up, down
        self.in_layers = nn.Sequential(GroupNorm32(ch, swish=True, num_groups=num_groups), nn.Identity(),
                                       nn.Conv2d(ch, out_ch, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_ch, 2 * out_ch))
        self.out_layers = nn.Sequential(GroupNorm32(out_ch, swish=False, num_groups=num_groups), nn.SiLU(),
                                        nn.Dropout(dropout),
                                        nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip_connection = nn.Identity() if ch == out_ch else nn.Conv2d(ch, out_ch, 1)

    @staticmethod
    def _resample(t, up):
        return F.interpolate(t, scale_factor=2, mode="nearest") if up else F.avg_pool2d(t, 2, 2)

    def forward(self, x, emb, xf_out):
        h = self.in_layers[0](x)
        if self.up or self.down:
            h = self._resample(h, self.up)
            x = self._resample(x, self.up)
        h = self.in_layers[2](h)
        scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.out_layers[0](h) * (1 + scale) + shift
        for layer in self.out_layers[1:]:
            h = layer(h)
        return self.skip_connection(x) + h


class AttentionRef(nn.Module):
    def __init__(self, ch, heads, encoder_ch, num_groups=32):
        super().__init__()
        self.heads = heads
        self.norm = GroupNorm32(ch, swish=False, num_groups=num_groups)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.encoder_kv = nn.Conv1d(encoder_ch, 2 * ch, 1)
        self.proj_out = nn.Conv1d(ch, ch, 1)

    def forward(self, x, emb, xf_out):
        b, c, hh, ww = x.shape
        d = c // self.heads
        qkv = self.qkv(self.norm(x).reshape(b, c, hh * ww)).reshape(b * self.heads, 3 * d, hh * ww)
        q, k, v = qkv[:, :d], qkv[:, d:2 * d], qkv[:, 2 * d:]
        ekv = self.encoder_kv(xf_out).reshape(b * self.heads, 2 * d, -1)
        k = torch.cat([ekv[:, :d], k], dim=-1)
        v = torch.cat([ekv[:, d:], v], dim=-1)
        s = 1.0 / math.sqrt(math.sqrt(d))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q * s, k * s).float(), dim=-1)
        a = torch.einsum("bts,bcs->bct", w.to(v.dtype), v).reshape(b, c, hh * ww)
        return x + self.proj_out(a).reshape(b, c, hh, ww)


class Seq(nn.ModuleList):
    def forward(self, x, emb, xf_out):
        for layer in self:
            x = layer(x, emb, xf_out) if isinstance(layer, (ResBlockRef, AttentionRef)) else layer(x)
        return x


class Text2ImUNetRef(nn.Module):
    """OpenAI-layout GLIDE UNet; ``super_res=True`` makes it the upsampler (forward takes
    low_res, resized with the legacy bilinear and concatenated after x)."""

    def __init__(self, in_channels=3, model_channels=192, out_channels=6, num_res_blocks=3,
                 attention_resolutions=(2, 4, 8), dropout=0.0, channel_mult=(1, 2, 3, 4),
                 num_head_channels=64, text_ctx=128, xf_width=512, xf_layers=16, xf_heads=8,
                 n_vocab=50001, gelu="tanh", ln_eps=1e-7, super_res=False, num_groups=32):
        super().__init__()
        self.super_res = super_res
        self.model_channels = model_channels
        emb_ch = 4 * model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def res(c, o, **kw):
            return ResBlockRef(c, emb_ch, o, dropout, num_groups=num_groups, **kw)

        def attn(c):
            return AttentionRef(c, c // num_head_channels, xf_width, num_groups)

        self.input_blocks = nn.ModuleList([Seq([nn.Conv2d(in_channels, model_channels, 3, padding=1)])])
        skips = [model_channels]
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                mods = [res(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    mods.append(attn(ch))
                self.input_blocks.append(Seq(mods))
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.input_blocks.append(Seq([res(ch, ch, down=True)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Seq([res(ch, ch), attn(ch), res(ch, ch)])
        self.output_blocks = nn.ModuleList()
        for level in reversed(range(len(channel_mult))):
            mult = channel_mult[level]
            for i in range(num_res_blocks + 1):
                mods = [res(ch + skips.pop(), mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    mods.append(attn(ch))
                if level > 0 and i == num_res_blocks:
                    mods.append(res(ch, ch, up=True))
                    ds //= 2
                self.output_blocks.append(Seq(mods))
        self.out = nn.Sequential(GroupNorm32(ch, swish=True, num_groups=num_groups), nn.Identity(),
                                 nn.Conv2d(ch, out_channels, 3, padding=1))
        _attach_text(self, text_ctx, xf_width, xf_layers, xf_heads, n_vocab, emb_ch, gelu, ln_eps)

    def forward(self, x, t, tokens, mask, low_res=None):
        if self.super_res:
            x = torch.cat([x, legacy_bilinear(low_res, x.shape[2], x.shape[3])], dim=1)
        xf_proj, xf_out = _text_forward(self, tokens, mask)
        emb = self.time_embed(timestep_embedding(t, self.model_channels)) + xf_proj
        hs = []
        h = x
        for blk in self.input_blocks:
            h = blk(h, emb, xf_out)
            hs.append(h)
        h = self.middle_block(h, emb, xf_out)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, hs.pop()], dim=1), emb, xf_out)
        return self.out(h)


# ----------------------------------------------------------------------------- SRGAN
class SRResBlockRef(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(ch, eps=1e-5)
        self.prelu = nn.PReLU(ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(ch, eps=1e-5)

    def forward(self, x):
        return x + self.bn2(self.conv2(self.prelu(self.bn1(self.conv1(x)))))


class SubpixelRef(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.conv = nn.Conv2d(ch, 4 * ch, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.prelu = nn.PReLU(ch)

    def forward(self, x):
        return self.prelu(self.shuffle(self.conv(x)))


class SRGANRef(nn.Module):
    def __init__(self, upscale_factor=4, num_blocks=16, channels=64):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, channels, 9, padding=4), nn.PReLU(channels))
        self.trunk = nn.Sequential(*[SRResBlockRef(channels) for _ in range(num_blocks)])
        self.conv2 = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.PReLU(channels))
        self.subpixel_conv = nn.Sequential(*[SubpixelRef(channels) for _ in range(int(math.log2(upscale_factor)))])
        self.conv3 = nn.Conv2d(channels, 3, 9, padding=4)

    def forward(self, x):
        a = self.conv1(x)
        y = a + self.conv2(self.trunk(a))
        return torch.tanh(self.conv3(self.subpixel_conv(y)))


_SRGAN_SUFFIX = {"w": "weight", "gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
                 "moving_variance": "running_var"}


def srgan_state_from_mindspore(state: dict) -> dict:
    """MindSpore SRGAN {name: array} -> PyTorch state_dict of :class:`SRGANRef`: renames the
    PReLU / BatchNorm params and reorders each sub-pixel conv's output channels from DCR
    (index s*C + c) to PixelShuffle's CRD (index 4c + s), s = 2i + j."""
    out = {}
    for name, value in state.items():
        stem, last = name.rsplit(".", 1)
        value = np.asarray(value, np.float32)
        if name.startswith("subpixel_conv.") and ".conv." in name:
            c = value.shape[0] // 4
            value = value.reshape(4, c, *value.shape[1:]).swapaxes(0, 1).reshape(value.shape)
        out[f"{stem}.{_SRGAN_SUFFIX.get(last, last)}"] = torch.from_numpy(np.ascontiguousarray(value))
    return out


def load_openai_state(module: nn.Module, state: dict) -> None:
    """Strictly load {openai key: array}; 4-D MindSpore 1x1 conv weights [o,i,1,1] are squeezed to
    the Conv1d shape [o,i,1] where the module expects 3 dims (nothing else is reshaped)."""
    own = module.state_dict()
    fixed = {}
    for key, value in state.items():
        value = np.asarray(value, np.float32)
        if key in own and own[key].dim() == 3 and value.ndim == 4 and value.shape[3] == 1:
            value = value[..., 0]
        fixed[key] = torch.from_numpy(np.ascontiguousarray(value))
    module.load_state_dict(fixed, strict=True)

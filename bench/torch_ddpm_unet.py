"""Independent PyTorch implementation of the class-conditional DDPM UNet, used only as a test /
benchmark reference for ``mind_diffusion.ddpm.unet.DDPMUNet``.

The architecture follows Ho et al. 2020 as organised by abarankab/DDPM, and its module names
deliberately follow the usual PyTorch layout rather than ours (``time_mlp.1`` / ``time_mlp.3``
for the two Linear layers behind the positional embedding, ``conv_2.1`` behind a Dropout,
``upsample.1`` behind ``nn.Upsample``, GroupNorm ``weight`` / ``bias``, Embedding ``weight``),
so :func:`load_from_mindspore` has to go through an explicit, checked name mapping.
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PositionalEmbedding(nn.Module):
    """[sin(t w_k), cos(t w_k)] with w_k = 10000^(-k / half), k = 0..half-1."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        assert dim % 2 == 0
        self.dim = dim
        self.max_period = max_period

    def forward(self, t):
        half = self.dim // 2
        k = torch.arange(half, device=t.device, dtype=torch.float32)
        w = torch.exp(k * (-math.log(self.max_period) / half))
        arg = t.to(torch.float32)[:, None] * w[None, :]
        return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual, GroupNorm in front."""

    def __init__(self, channels: int, num_groups: int, zero_init: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(num_groups, channels)
        self.to_qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.to_out = nn.Conv2d(channels, channels, 1)
        if zero_init:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        q = q.reshape(b, c, h * w).transpose(1, 2)          # B, N, C
        k = k.reshape(b, c, h * w)                           # B, C, N
        v = v.reshape(b, c, h * w).transpose(1, 2)          # B, N, C
        weights = torch.softmax(torch.bmm(q, k) / math.sqrt(c), dim=-1)   # B, N(query), N(key)
        out = torch.bmm(weights, v).transpose(1, 2).reshape(b, c, h, w)
        return x + self.to_out(out)


class ResidualBlock(nn.Module):
    def __init__(self, in_ch, out_ch, time_emb_dim, num_classes, dropout, num_groups, attention,
                 zero_init=False):
        super().__init__()
        self.norm_1 = nn.GroupNorm(num_groups, in_ch)
        self.conv_1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_bias = nn.Linear(time_emb_dim, out_ch)
        self.class_bias = nn.Embedding(num_classes, out_ch) if num_classes is not None else None
        self.norm_2 = nn.GroupNorm(num_groups, out_ch)
        self.conv_2 = nn.Sequential(nn.Dropout(p=dropout), nn.Conv2d(out_ch, out_ch, 3, padding=1))
        if zero_init:
            nn.init.zeros_(self.conv_2[1].weight)
            nn.init.zeros_(self.conv_2[1].bias)
        self.residual_connection = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.attention = AttentionBlock(out_ch, num_groups, zero_init) if attention else nn.Identity()

    def forward(self, x, temb, y):
        h = self.conv_1(F.silu(self.norm_1(x)))
        h = h + self.time_bias(F.silu(temb))[:, :, None, None]
        if self.class_bias is not None:
            if y is None:
                raise ValueError("a class-conditional model needs labels y")
            h = h + self.class_bias(y)[:, :, None, None]
        h = self.conv_2(F.silu(self.norm_2(h)))
        return self.attention(h + self.residual_connection(x))


class Downsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.downsample = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, temb, y):
        return self.downsample(x)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        self.upsample = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                      nn.Conv2d(ch, ch, 3, padding=1))

    def forward(self, x, temb, y):
        return self.upsample(x)


class TorchDDPMUNet(nn.Module):
    """forward(x (B,C,H,W), t (B,) integer steps, y (B,) long labels or None) -> eps."""

    def __init__(self, img_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
                 time_emb_dim=512, dropout=0.1, attention_resolutions=(1,), num_classes=None,
                 num_groups=32, zero_init=False):
        super().__init__()
        self.num_classes = num_classes
        self.time_mlp = nn.Sequential(PositionalEmbedding(base_channels),
                                      nn.Linear(base_channels, time_emb_dim), nn.SiLU(),
                                      nn.Linear(time_emb_dim, time_emb_dim))
        self.init_conv = nn.Conv2d(img_channels, base_channels, 3, padding=1)
        kw = dict(time_emb_dim=time_emb_dim, num_classes=num_classes, dropout=dropout,
                  num_groups=num_groups, zero_init=zero_init)

        self.downs = nn.ModuleList()
        channels = [base_channels]   # channels of every tensor pushed on the skip stack
        now = base_channels
        last = len(channel_mults) - 1
        for level, mult in enumerate(channel_mults):
            out = base_channels * mult
            for _ in range(num_res_blocks):
                self.downs.append(ResidualBlock(now, out, attention=level in attention_resolutions, **kw))
                now = out
                channels.append(now)
            if level != last:
                self.downs.append(Downsample(now))
                channels.append(now)

        self.mid = nn.ModuleList([ResidualBlock(now, now, attention=True, **kw),
                                  ResidualBlock(now, now, attention=False, **kw)])

        self.ups = nn.ModuleList()
        for level in range(last, -1, -1):
            out = base_channels * channel_mults[level]
            for _ in range(num_res_blocks + 1):
                self.ups.append(ResidualBlock(channels.pop() + now, out,
                                              attention=level in attention_resolutions, **kw))
                now = out
            if level != 0:
                self.ups.append(Upsample(now))
        assert not channels, "skip bookkeeping is off"

        self.out_norm = nn.GroupNorm(num_groups, base_channels)
        self.out_conv = nn.Conv2d(base_channels, img_channels, 3, padding=1)
        if zero_init:
            nn.init.zeros_(self.out_conv.weight)
            nn.init.zeros_(self.out_conv.bias)

    def forward(self, x, t, y=None):
        temb = self.time_mlp(t)
        h = self.init_conv(x)
        skips = [h]
        for layer in self.downs:
            h = layer(h, temb, y)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, temb, y)
        for layer in self.ups:
            if isinstance(layer, ResidualBlock):
                h = torch.cat([h, skips.pop()], dim=1)
            h = layer(h, temb, y)
        assert not skips
        return self.out_conv(F.silu(self.out_norm(h)))


# --------------------------------------------------------------------------- weight transfer

# (pattern on the MindSpore name, replacement giving the torch name), applied in order, each at
# most once. Anything not rewritten keeps its name (conv / dense ``weight`` and ``bias``).
_NAME_RULES = (
    (r"^time_mlp\.0\.", "time_mlp.1."),            # Linear behind PositionalEmbedding (index 0)
    (r"^time_mlp\.2\.", "time_mlp.3."),
    (r"\.conv_2\.(weight|bias)$", r".conv_2.1.\1"),  # Conv behind the Dropout
    (r"\.upsample\.conv\.", ".upsample.1."),       # Conv behind nn.Upsample
    (r"\.gamma$", ".weight"),                      # GroupNorm
    (r"\.beta$", ".bias"),
    (r"\.embedding_table$", ".weight"),            # Embedding
)


def mindspore_to_torch_name(ms_name: str) -> str:
    name = ms_name
    for pattern, repl in _NAME_RULES:
        name = re.sub(pattern, repl, name)
    return name


def _ms_state(ms_net_or_dict) -> dict:
    if isinstance(ms_net_or_dict, dict):
        return {k: np.asarray(v) for k, v in ms_net_or_dict.items()}
    return {p.name: p.asnumpy() for p in ms_net_or_dict.get_parameters()}


def load_from_mindspore(torch_net: nn.Module, ms_net_or_dict) -> dict:
    """Copy every MindSpore parameter into ``torch_net``; return the {ms name: torch name} map.

    ``ms_net_or_dict`` is a MindSpore ``Cell`` or a {MindSpore name: array} dict. Raises
    ``AssertionError`` unless the mapping is a bijection between the two parameter sets
    (every parameter on each side used exactly once) with identical shapes.
    """
    src = _ms_state(ms_net_or_dict)
    dst = dict(torch_net.named_parameters())
    mapping = {k: mindspore_to_torch_name(k) for k in src}

    targets = list(mapping.values())
    dup = sorted({t for t in targets if targets.count(t) > 1})
    assert not dup, f"several MindSpore parameters map to the same torch parameter: {dup}"
    missing = sorted(t for t in targets if t not in dst)
    assert not missing, f"mapped names absent from the torch model: {missing[:10]}"
    unused = sorted(set(dst) - set(targets))
    assert not unused, f"torch parameters not fed by any MindSpore parameter: {unused[:10]}"
    for ms_name, t_name in mapping.items():
        assert tuple(src[ms_name].shape) == tuple(dst[t_name].shape), \
            f"shape mismatch {ms_name} {src[ms_name].shape} -> {t_name} {tuple(dst[t_name].shape)}"
    with torch.no_grad():
        for ms_name, t_name in mapping.items():
            dst[t_name].copy_(torch.from_numpy(np.ascontiguousarray(src[ms_name], dtype=np.float32)))
    return mapping


def torch_state_as_mindspore(torch_net: nn.Module, mapping: dict) -> dict:
    """The torch parameters as numpy arrays keyed by MindSpore name (inverse of the load)."""
    params = dict(torch_net.named_parameters())
    return {ms_name: params[t_name].detach().cpu().numpy().copy() for ms_name, t_name in mapping.items()}

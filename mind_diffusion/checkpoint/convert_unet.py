"""Name converters for the SD-v1 / Wukong-Huahua UNet (pure numpy, no framework imports).

Three layouts of the same tensors (no prefixes: strip ``model.diffusion_model.`` / ``unet.``
before calling):

* **ours** (MindSpore Wukong port, ``mind_diffusion.ldm.unet.LDMUNet``): ``*.gamma/beta`` norms,
  ``in_layers_norm``, ``in_layers_conv.conv``, ``op.conv``, ``conv.conv``, ``out.2.conv`` ...
* **CompVis** (PyTorch ``ldm`` / original SD-v1 ``.ckpt``): ``in_layers.0``, ``in_layers.2``,
  ``out_layers.0/3``, ``skip_connection``, ``op``, ``conv``, ``out.0/2``; norms ``weight/bias``.
* **diffusers** (``UNet2DConditionModel``): ``conv_in``, ``time_embedding.linear_1/2``,
  ``down_blocks.i.{resnets,attentions}.j``, ``mid_block``, ``up_blocks``, ``conv_norm_out``,
  ``conv_out``; needs the model config (layers per block, block types).

Tensor layouts are identical in all three (Dense [out, in], Conv [out, in, kh, kw]) except
diffusers' ``use_linear_projection`` (``proj_in``/``proj_out`` as Linear [C, C] instead of a
1x1 conv [C, C, 1, 1]). Every function raises ``ValueError`` listing the names it does not know.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

_P = r"(?P<p>(?:input_blocks|output_blocks)\.\d+\.\d+|middle_block\.\d+)"
_T = r"(?P<p>(?:input_blocks|output_blocks)\.\d+\.\d+|middle_block\.\d+)\.transformer_blocks\.(?P<i>\d+)"

# (CompVis regex body, CompVis template, ours regex body, ours template, leaf kind)
# leaf kind "wb": .weight/.bias on both sides; "norm": weight/bias <-> gamma/beta; "w": .weight only
_RULES = [
    (r"time_embed\.(?P<i>[02])", "time_embed.{i}", r"time_embed\.(?P<i>[02])", "time_embed.{i}", "wb"),
    (r"input_blocks\.0\.0", "input_blocks.0.0", r"input_blocks\.0\.0\.conv", "input_blocks.0.0.conv", "wb"),
    (_P + r"\.in_layers\.0", "{p}.in_layers.0", _P + r"\.in_layers_norm", "{p}.in_layers_norm", "norm"),
    (_P + r"\.in_layers\.2", "{p}.in_layers.2", _P + r"\.in_layers_conv\.conv", "{p}.in_layers_conv.conv", "wb"),
    (_P + r"\.emb_layers\.1", "{p}.emb_layers.1", _P + r"\.emb_layers\.1", "{p}.emb_layers.1", "wb"),
    (_P + r"\.out_layers\.0", "{p}.out_layers.0", _P + r"\.out_layers_norm", "{p}.out_layers_norm", "norm"),
    (_P + r"\.out_layers\.3", "{p}.out_layers.3", _P + r"\.out_layers_conv\.conv", "{p}.out_layers_conv.conv", "wb"),
    (_P + r"\.skip_connection", "{p}.skip_connection", _P + r"\.skip_connection\.conv",
     "{p}.skip_connection.conv", "wb"),
    (_P + r"\.op", "{p}.op", _P + r"\.op\.conv", "{p}.op.conv", "wb"),
    (_P + r"\.conv", "{p}.conv", _P + r"\.conv\.conv", "{p}.conv.conv", "wb"),
    (_P + r"\.norm", "{p}.norm", _P + r"\.norm", "{p}.norm", "norm"),
    (_P + r"\.(?P<i>proj_in|proj_out)", "{p}.{i}", _P + r"\.(?P<i>proj_in|proj_out)", "{p}.{i}", "wb"),
    (_T + r"\.(?P<a>attn[12]\.to_[qkv])", "{p}.transformer_blocks.{i}.{a}",
     _T + r"\.(?P<a>attn[12]\.to_[qkv])", "{p}.transformer_blocks.{i}.{a}", "w"),
    (_T + r"\.(?P<a>attn[12]\.to_out\.0|ff\.net\.0\.proj|ff\.net\.2)", "{p}.transformer_blocks.{i}.{a}",
     _T + r"\.(?P<a>attn[12]\.to_out\.0|ff\.net\.0\.proj|ff\.net\.2)", "{p}.transformer_blocks.{i}.{a}", "wb"),
    (_T + r"\.(?P<a>norm[123])", "{p}.transformer_blocks.{i}.{a}",
     _T + r"\.(?P<a>norm[123])", "{p}.transformer_blocks.{i}.{a}", "norm"),
    (r"out\.0", "out.0", r"out\.0", "out.0", "norm"),
    (r"out\.2", "out.2", r"out\.2\.conv", "out.2.conv", "wb"),
]
_LEAVES = {"wb": (("weight", "weight"), ("bias", "bias")),
           "norm": (("weight", "gamma"), ("bias", "beta")),
           "w": (("weight", "weight"),)}


def _compile(direction: int):
    """direction 0: CompVis -> ours; 1: ours -> CompVis. [(regex, template)]"""
    out = []
    for cv_re, cv_tpl, our_re, our_tpl, kind in _RULES:
        for cv_leaf, our_leaf in _LEAVES[kind]:
            if direction == 0:
                out.append((re.compile(rf"{cv_re}\.{cv_leaf}"), f"{our_tpl}.{our_leaf}"))
            else:
                out.append((re.compile(rf"{our_re}\.{our_leaf}"), f"{cv_tpl}.{cv_leaf}"))
    return out


_CV_TO_OURS = _compile(0)
_OURS_TO_CV = _compile(1)


def _rename(state: Mapping[str, np.ndarray], rules, what: str) -> dict[str, np.ndarray]:
    out, unknown = {}, []
    for name, value in state.items():
        for regex, tpl in rules:
            m = regex.fullmatch(name)
            if m:
                new = tpl.format(**m.groupdict())
                if new in out:
                    raise ValueError(f"{what}: two tensors map to {new!r}")
                out[new] = value
                break
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" ... and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise ValueError(f"{what}: {len(unknown)} unknown UNet tensor name(s): {shown} "
                         f"(strip prefixes such as 'model.diffusion_model.' first; EMA/schedule buffers "
                         f"are not UNet tensors)")
    return out


def compvis_unet_to_ours(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CompVis (PyTorch ldm) UNet names -> MindSpore port names (Wukong-Huahua's ``openaimodel.py``
    cells). Same arrays."""
    return _rename(state, _CV_TO_OURS, "compvis_unet_to_ours")


def ours_to_compvis_unet(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """MindSpore port names -> CompVis names (inverse of ``compvis_unet_to_ours``)."""
    return _rename(state, _OURS_TO_CV, "ours_to_compvis_unet")


# ---------------------------------------------------------------------------------------------
# diffusers <-> CompVis

_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
           "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_RESNET_INV = {v: k for k, v in _RESNET.items()}
_ATTN_LEAF = re.compile(r"(?:norm|proj_in|proj_out|transformer_blocks\.\d+\.(?:attn[12]\.to_[qkv]|attn[12]\.to_out\.0|"
                        r"ff\.net\.0\.proj|ff\.net\.2|norm[123]))\.(?:weight|bias)")


def _per_block(value, key):
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"diffusers config {key}={value}: only the same value for every block is supported")
        return int(value[0])
    return int(value)


def _block_table(config: Mapping) -> list[tuple[str, str, str]]:
    """[(diffusers prefix, CompVis prefix, kind)] for a UNet2DConditionModel config."""
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block"):
        if key not in config:
            raise ValueError(f"diffusers UNet config lacks {key!r} (pass the UNet2DConditionModel config dict)")
    down, up = list(config["down_block_types"]), list(config["up_block_types"])
    n = len(config["block_out_channels"])
    if len(down) != n or len(up) != n:
        raise ValueError(f"diffusers config: {len(down)} down / {len(up)} up block types for {n} block_out_channels")
    mid = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid != "UNetMidBlock2DCrossAttn":
        raise ValueError(f"diffusers config: mid_block_type {mid!r} is not the SD-v1 UNetMidBlock2DCrossAttn")
    for t in down + up:
        if t not in ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"):
            raise ValueError(f"diffusers config: block type {t!r} is not an SD-v1 block type")
    for key in ("class_embed_type", "addition_embed_type", "encoder_hid_dim"):
        if config.get(key) is not None:
            raise ValueError(f"diffusers config: {key}={config[key]!r} has no CompVis SD-v1 counterpart")
    nl = _per_block(config["layers_per_block"], "layers_per_block")
    table = [("conv_in", "input_blocks.0.0", "plain"),
             ("time_embedding.linear_1", "time_embed.0", "plain"),
             ("time_embedding.linear_2", "time_embed.2", "plain")]
    k = 1
    for i, t in enumerate(down):
        for j in range(nl):
            table.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{k}.0", "resnet"))
            if t.startswith("CrossAttn"):
                table.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{k}.1", "attn"))
            k += 1
        if i != n - 1:
            table.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{k}.0.op", "plain"))
            k += 1
    table += [("mid_block.resnets.0", "middle_block.0", "resnet"),
              ("mid_block.attentions.0", "middle_block.1", "attn"),
              ("mid_block.resnets.1", "middle_block.2", "resnet")]
    k = 0
    for i, t in enumerate(up):
        attn = t.startswith("CrossAttn")
        for j in range(nl + 1):
            table.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{k}.0", "resnet"))
            if attn:
                table.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{k}.1", "attn"))
            if j == nl and i != n - 1:
                table.append((f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{k}.{2 if attn else 1}.conv",
                              "plain"))
            k += 1
    table += [("conv_norm_out", "out.0", "plain"), ("conv_out", "out.2", "plain")]
    return table


def _convert_blocks(state, table, src: int, linear_proj: bool, to_linear: bool, what: str):
    dst = 1 - src
    prefixes = {row[src]: row for row in table}
    out, unknown = {}, []
    for name, value in state.items():
        parts = name.split(".")
        row = None
        for cut in range(len(parts) - 1, 0, -1):
            row = prefixes.get(".".join(parts[:cut]))
            if row is not None:
                rest = ".".join(parts[cut:])
                break
        if row is None:
            unknown.append(name)
            continue
        kind = row[2]
        if kind == "plain":
            if rest not in ("weight", "bias"):
                unknown.append(name)
                continue
            new_rest = rest
        elif kind == "resnet":
            sub, _, leaf = rest.rpartition(".")
            mapping = _RESNET if src == 0 else _RESNET_INV
            if sub not in mapping or leaf not in ("weight", "bias"):
                unknown.append(name)
                continue
            new_rest = f"{mapping[sub]}.{leaf}"
        else:
            if not _ATTN_LEAF.fullmatch(rest):
                unknown.append(name)
                continue
            new_rest = rest
            if linear_proj and rest in ("proj_in.weight", "proj_out.weight"):
                value = np.asarray(value)
                value = value.reshape(value.shape[0], -1) if to_linear else value.reshape(*value.shape, 1, 1)
        new = f"{row[dst]}.{new_rest}"
        if new in out:
            raise ValueError(f"{what}: two tensors map to {new!r}")
        out[new] = value
    if unknown:
        shown = ", ".join(unknown[:20]) + (f" ... and {len(unknown) - 20} more" if len(unknown) > 20 else "")
        raise ValueError(f"{what}: {len(unknown)} tensor name(s) do not fit this UNet config: {shown} "
                         f"(strip prefixes such as 'unet.' / 'model.diffusion_model.' first, and check the config)")
    return out


def diffusers_unet_to_compvis(state: Mapping[str, np.ndarray], config: Mapping) -> dict[str, np.ndarray]:
    """diffusers ``UNet2DConditionModel`` state (numpy) -> CompVis SD-v1 UNet names.
    ``config``: the diffusers UNet config dict (``unet.config`` / ``unet/config.json``)."""
    linear = bool(config.get("use_linear_projection", False))
    return _convert_blocks(state, _block_table(config), 0, linear, False, "diffusers_unet_to_compvis")


def compvis_unet_to_diffusers(state: Mapping[str, np.ndarray], config: Mapping) -> dict[str, np.ndarray]:
    """CompVis SD-v1 UNet names -> diffusers names for ``config`` (inverse of the above)."""
    linear = bool(config.get("use_linear_projection", False))
    return _convert_blocks(state, _block_table(config), 1, linear, True, "compvis_unet_to_diffusers")


_CFG_KEYS = ("in_channels", "out_channels", "model_channels", "channel_mult", "num_res_blocks",
             "attention_resolutions", "num_heads", "context_dim", "transformer_depth", "num_groups",
             "gelu", "dropout", "attn_slice", "time_freqs",
             # LoRA options (the original's keys + our targets): no effect on the base network
             "enable_lora", "lora_rank", "lora_alpha", "lora_targets")


def compvis_unet_config_to_diffusers(cfg: Mapping | None = None) -> dict:
    """Our ``LDMUNet`` constructor kwargs (missing ones take the SD-v1 defaults) -> the kwargs of
    diffusers ``UNet2DConditionModel`` for the same network. ``gelu`` / ``attn_slice`` /
    ``time_freqs`` have no diffusers field (diffusers' GEGLU is always the exact erf GELU); the
    LoRA options add adapters, not base layers (peft's ``LoraConfig`` holds them in diffusers)."""
    cfg = dict(cfg or {})
    unknown = set(cfg) - set(_CFG_KEYS)
    if unknown:
        raise ValueError(f"unknown LDMUNet option(s): {sorted(unknown)}; valid: {list(_CFG_KEYS)}")
    full = dict(zip(_CFG_KEYS, (4, 4, 320, (1, 2, 4, 4), 2, (4, 2, 1), 8, 768, 1, 32, "tanh", 0.0, None,
                                    "float64", False, 4, 4, None)))
    full.update(cfg)
    mult = tuple(full["channel_mult"])
    attn = set(full["attention_resolutions"])
    down, up = [], []
    for level in range(len(mult)):
        down.append("CrossAttnDownBlock2D" if 2 ** level in attn else "DownBlock2D")
    for level in reversed(range(len(mult))):
        up.append("CrossAttnUpBlock2D" if 2 ** level in attn else "UpBlock2D")
    return {
        "in_channels": int(full["in_channels"]), "out_channels": int(full["out_channels"]),
        "down_block_types": tuple(down), "up_block_types": tuple(up),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "block_out_channels": tuple(int(full["model_channels"]) * m for m in mult),
        "layers_per_block": int(full["num_res_blocks"]),
        "cross_attention_dim": int(full["context_dim"]),
        "attention_head_dim": int(full["num_heads"]),  # SD-v1 diffusers quirk: this field is the head count
        "transformer_layers_per_block": int(full["transformer_depth"]),
        "norm_num_groups": int(full["num_groups"]), "norm_eps": 1e-5, "act_fn": "silu",
        "flip_sin_to_cos": True, "freq_shift": 0, "use_linear_projection": False,
        "downsample_padding": 1, "mid_block_scale_factor": 1, "center_input_sample": False,
        "dropout": float(full["dropout"]),
    }

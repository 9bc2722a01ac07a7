"""Name converters for the KL autoencoder (first stage) of SD-v1 / Wukong-Huahua.

Pure numpy: ``{name: np.ndarray}`` in, ``{name: np.ndarray}`` out, names *without* any prefix
(strip ``first_stage_model.`` / ``vae.`` before calling). Three layouts:

- **ours** (MindSpore, ``mind_diffusion.ldm.autoencoder.AutoencoderKL``): CompVis names with
  GroupNorm ``gamma``/``beta``, plus two cells that are built but never used
  (``encoder.down.<last>.downsample.conv.*``, ``decoder.up.0.upsample.conv.*``).
- **compvis** (PyTorch ``ldm.models.autoencoder.AutoencoderKL``): norms ``weight``/``bias``;
  no unused cells.
- **diffusers** (``diffusers.AutoencoderKL``): ``down_blocks``/``up_blocks`` (decoder reversed),
  ``mid_block``, attention as Linear layers ``to_q/to_k/to_v/to_out.0`` (old releases:
  ``query/key/value/proj_attn``), ``conv_norm_out``, ``conv_shortcut``.

Tensor layouts are identical apart from the attention projections (diffusers Linear [C, C] vs
CompVis 1x1 conv [C, C, 1, 1]); arrays are passed through (reshaped views where needed).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import numpy as np

__all__ = ["compvis_vae_to_diffusers", "compvis_vae_to_ours", "diffusers_vae_to_compvis",
           "ours_to_compvis_vae", "unused_vae_names"]

_RES = r"(?:norm1|norm2|conv1|conv2|nin_shortcut)"
_WB = r"(?:weight|bias)"
_COMPVIS_PATTERNS = [re.compile(p) for p in (
    rf"(?:encoder|decoder)\.(?:conv_in|conv_out|norm_out)\.{_WB}",
    rf"encoder\.down\.\d+\.block\.\d+\.{_RES}\.{_WB}",
    rf"encoder\.down\.\d+\.downsample\.conv\.{_WB}",
    rf"decoder\.up\.\d+\.block\.\d+\.{_RES}\.{_WB}",
    rf"decoder\.up\.\d+\.upsample\.conv\.{_WB}",
    rf"(?:encoder|decoder)\.mid\.block_[12]\.{_RES}\.{_WB}",
    rf"(?:encoder|decoder)\.mid\.attn_1\.(?:norm|q|k|v|proj_out)\.{_WB}",
    rf"(?:quant_conv|post_quant_conv)\.{_WB}",
)]
# GroupNorm cells: their leaf names differ between ours (gamma/beta) and torch (weight/bias)
_NORM_RE = re.compile(r"^(.*\.(?:norm1|norm2|norm|norm_out))\.(weight|bias|gamma|beta)$")
_TO_OURS = {"weight": "gamma", "bias": "beta"}
_TO_TORCH = {"gamma": "weight", "beta": "bias"}


def _fmt(names, limit=20):
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _prefix_hint(names) -> str:
    for p in ("first_stage_model.", "vae.", "model."):
        if any(n.startswith(p) for n in names):
            return f" (names must not carry a prefix: strip '{p}' before converting)"
    return ""


def _levels(names, pattern: str) -> int:
    idx = [int(m.group(1)) for n in names if (m := re.match(pattern, n))]
    return max(idx) + 1 if idx else 0


def _is_compvis_name(name: str) -> bool:
    return any(p.fullmatch(name) for p in _COMPVIS_PATTERNS)


def unused_vae_names(state_names) -> list[str]:
    """The never-used cells of our layout, for the level counts found in ``state_names``
    (empty when the names hold no encoder / decoder levels)."""
    names = list(state_names)
    out = []
    n_enc = _levels(names, r"encoder\.down\.(\d+)\.")
    if n_enc:
        out += [f"encoder.down.{n_enc - 1}.downsample.conv.{s}" for s in ("weight", "bias")]
    if _levels(names, r"decoder\.up\.(\d+)\."):
        out += [f"decoder.up.0.upsample.conv.{s}" for s in ("weight", "bias")]
    return out


def _last_block_channels(state: Mapping[str, np.ndarray], prefix: str):
    """(out channels, dtype) of the last ResnetBlock under ``prefix`` (e.g. 'decoder.up.0.')."""
    j = _levels(state, re.escape(prefix) + r"block\.(\d+)\.")
    if not j:
        return None
    w = state.get(f"{prefix}block.{j - 1}.conv2.weight")
    return None if w is None else (int(w.shape[0]), np.asarray(w).dtype)


def _drop_loss(state: Mapping[str, np.ndarray]) -> dict:
    loss = [k for k in state if k.startswith("loss.")]
    if loss:
        warnings.warn(f"VAE converter: dropping {len(loss)} 'loss.*' tensors (training "
                      f"discriminator / LPIPS, not part of the autoencoder)", stacklevel=3)
    return {k: v for k, v in state.items() if not k.startswith("loss.")}


def compvis_vae_to_ours(state: Mapping[str, np.ndarray]) -> tuple[dict, list[str]]:
    """CompVis PyTorch VAE names -> ours. Returns ``(state_ours, filled_names)``.

    Norm ``weight``/``bias`` become ``gamma``/``beta``; the two never-used cells that PyTorch
    lacks are filled with zeros and listed in ``filled_names`` (treat them as allowed-missing
    when loading). ``loss.*`` keys are dropped (with a warning); any other unknown key raises
    ValueError."""
    state = _drop_loss(state)
    unknown = [k for k in state if not _is_compvis_name(k)]
    if unknown:
        raise ValueError(f"compvis_vae_to_ours: {len(unknown)} tensor names are not CompVis "
                         f"AutoencoderKL names{_prefix_hint(unknown)}: {_fmt(unknown)}")
    out = {}
    for k, v in state.items():
        m = _NORM_RE.match(k)
        out[f"{m.group(1)}.{_TO_OURS[m.group(2)]}" if m else k] = v
    filled = []
    n_enc = _levels(out, r"encoder\.down\.(\d+)\.")
    targets = []
    if n_enc:
        targets.append((f"encoder.down.{n_enc - 1}.", "downsample"))
    if _levels(out, r"decoder\.up\.(\d+)\."):
        targets.append(("decoder.up.0.", "upsample"))
    for prefix, cell in targets:
        wname, bname = f"{prefix}{cell}.conv.weight", f"{prefix}{cell}.conv.bias"
        if wname in out and bname in out:
            continue
        info = _last_block_channels(out, prefix)
        if info is None:
            continue  # incomplete state: the strict loader will report what is missing
        c, dtype = info
        for name, shape in ((wname, (c, c, 3, 3)), (bname, (c,))):
            if name not in out:
                out[name] = np.zeros(shape, dtype)
                filled.append(name)
    return out, filled


def ours_to_compvis_vae(state: Mapping[str, np.ndarray]) -> dict:
    """Our names -> CompVis PyTorch names (gamma/beta -> weight/bias); the two never-used cells
    are dropped. Unknown keys raise ValueError."""
    unknown = []
    out = {}
    unused = set(unused_vae_names(state))
    for k, v in state.items():
        m = _NORM_RE.match(k)
        if m and m.group(2) in _TO_TORCH:
            name = f"{m.group(1)}.{_TO_TORCH[m.group(2)]}"
        elif m:  # a norm with weight/bias names is not ours
            name = None
        else:
            name = k
        if name is None or not _is_compvis_name(name):
            unknown.append(k)
            continue
        if k not in unused:
            out[name] = v
    if unknown:
        raise ValueError(f"ours_to_compvis_vae: {len(unknown)} tensor names are not names of "
                         f"mind_diffusion's AutoencoderKL{_prefix_hint(unknown)}: {_fmt(unknown)}")
    return out


# ---------------------------------------------------------------------------------- diffusers

_D_RES_LEAF = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2",
               "conv_shortcut": "nin_shortcut"}
_D_ATTN_LEAF = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}
_C_RES_LEAF = {v: k for k, v in _D_RES_LEAF.items()}
_C_ATTN_LEAF = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}

_D_RES_RE = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\.resnets\.(\d+)\."
                       r"(norm1|conv1|norm2|conv2|conv_shortcut)\.(weight|bias)$")
_D_RESAMPLE_RE = re.compile(r"^(encoder|decoder)\.(down_blocks|up_blocks)\.(\d+)\."
                            r"(downsamplers|upsamplers)\.0\.conv\.(weight|bias)$")
_D_MID_RES_RE = re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.([01])\."
                           r"(norm1|conv1|norm2|conv2|conv_shortcut)\.(weight|bias)$")
_D_MID_ATTN_RE = re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\."
                            r"(group_norm|to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.(weight|bias)$")
_D_TOP_RE = re.compile(r"^(?:(encoder|decoder)\.(conv_in|conv_out|conv_norm_out)|(quant_conv|post_quant_conv))"
                       r"\.(weight|bias)$")


def _as_conv1x1(v):
    v = np.asarray(v)
    return v.reshape(v.shape[0], v.shape[1], 1, 1) if v.ndim == 2 else v


def _as_linear(v):
    v = np.asarray(v)
    return v.reshape(v.shape[0], v.shape[1]) if v.ndim == 4 else v


def diffusers_vae_to_compvis(state: Mapping[str, np.ndarray]) -> dict:
    """diffusers ``AutoencoderKL`` state -> CompVis PyTorch names (attention Linear weights
    become [C, C, 1, 1]). Accepts the old attention names query/key/value/proj_attn.
    Unknown keys raise ValueError."""
    n_up = _levels(state, r"decoder\.up_blocks\.(\d+)\.")
    out, unknown = {}, []
    for k, v in state.items():
        if m := _D_RES_RE.match(k):
            side, blocks, i, j, leaf, wb = m.groups()
            lvl = int(i) if blocks == "down_blocks" else n_up - 1 - int(i)
            where = "down" if side == "encoder" else "up"
            if (side == "encoder") != (blocks == "down_blocks"):
                unknown.append(k)
                continue
            out[f"{side}.{where}.{lvl}.block.{j}.{_D_RES_LEAF[leaf]}.{wb}"] = v
        elif m := _D_RESAMPLE_RE.match(k):
            side, blocks, i, kind, wb = m.groups()
            if (side, blocks, kind) == ("encoder", "down_blocks", "downsamplers"):
                out[f"encoder.down.{i}.downsample.conv.{wb}"] = v
            elif (side, blocks, kind) == ("decoder", "up_blocks", "upsamplers"):
                out[f"decoder.up.{n_up - 1 - int(i)}.upsample.conv.{wb}"] = v
            else:
                unknown.append(k)
        elif m := _D_MID_RES_RE.match(k):
            side, j, leaf, wb = m.groups()
            out[f"{side}.mid.block_{int(j) + 1}.{_D_RES_LEAF[leaf]}.{wb}"] = v
        elif m := _D_MID_ATTN_RE.match(k):
            side, leaf, wb = m.groups()
            c_leaf = _D_ATTN_LEAF[leaf]
            out[f"{side}.mid.attn_1.{c_leaf}.{wb}"] = _as_conv1x1(v) if (wb == "weight" and c_leaf != "norm") else v
        elif m := _D_TOP_RE.match(k):
            side, leaf, top, wb = m.groups()
            if top:
                out[f"{top}.{wb}"] = v
            else:
                out[f"{side}.{'norm_out' if leaf == 'conv_norm_out' else leaf}.{wb}"] = v
        else:
            unknown.append(k)
    if unknown:
        raise ValueError(f"diffusers_vae_to_compvis: {len(unknown)} tensor names are not diffusers "
                         f"AutoencoderKL names{_prefix_hint(unknown)}: {_fmt(unknown)}")
    return out


_C_RES_RE = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.block\.(\d+)\.(norm1|conv1|norm2|conv2|nin_shortcut)"
                       r"\.(weight|bias)$")
_C_RESAMPLE_RE = re.compile(r"^(encoder\.down|decoder\.up)\.(\d+)\.(downsample|upsample)\.conv\.(weight|bias)$")
_C_MID_RE = re.compile(r"^(encoder|decoder)\.mid\.(block_1|block_2|attn_1)\.(\w+)\.(weight|bias)$")
_C_TOP_RE = re.compile(r"^(?:(encoder|decoder)\.(conv_in|conv_out|norm_out)|(quant_conv|post_quant_conv))"
                       r"\.(weight|bias)$")


def compvis_vae_to_diffusers(state: Mapping[str, np.ndarray]) -> dict:
    """CompVis PyTorch VAE names -> current diffusers ``AutoencoderKL`` names (attention
    weights become Linear [C, C]). The never-used cells of our layout, if present, are dropped
    (diffusers has no slot for them). Unknown keys raise ValueError."""
    state = _drop_loss(state)
    n_up = _levels(state, r"decoder\.up\.(\d+)\.")
    unused = set(unused_vae_names(state))
    out, unknown = {}, []
    for k, v in state.items():
        if not _is_compvis_name(k):
            unknown.append(k)
        elif k in unused:
            continue
        elif m := _C_RES_RE.match(k):
            where, i, j, leaf, wb = m.groups()
            if where == "encoder.down":
                out[f"encoder.down_blocks.{i}.resnets.{j}.{_C_RES_LEAF[leaf]}.{wb}"] = v
            else:
                out[f"decoder.up_blocks.{n_up - 1 - int(i)}.resnets.{j}.{_C_RES_LEAF[leaf]}.{wb}"] = v
        elif m := _C_RESAMPLE_RE.match(k):
            where, i, _kind, wb = m.groups()
            if where == "encoder.down":
                out[f"encoder.down_blocks.{i}.downsamplers.0.conv.{wb}"] = v
            else:
                out[f"decoder.up_blocks.{n_up - 1 - int(i)}.upsamplers.0.conv.{wb}"] = v
        elif m := _C_MID_RE.match(k):
            side, cell, leaf, wb = m.groups()
            if cell == "attn_1":
                d_leaf = _C_ATTN_LEAF[leaf]
                out[f"{side}.mid_block.attentions.0.{d_leaf}.{wb}"] = (
                    _as_linear(v) if (wb == "weight" and leaf != "norm") else v)
            else:
                j = 0 if cell == "block_1" else 1
                out[f"{side}.mid_block.resnets.{j}.{_C_RES_LEAF[leaf]}.{wb}"] = v
        elif m := _C_TOP_RE.match(k):
            side, leaf, top, wb = m.groups()
            if top:
                out[f"{top}.{wb}"] = v
            else:
                out[f"{side}.{'conv_norm_out' if leaf == 'norm_out' else leaf}.{wb}"] = v
        else:  # pragma: no cover - every CompVis pattern is handled above
            unknown.append(k)
    if unknown:
        raise ValueError(f"compvis_vae_to_diffusers: {len(unknown)} tensor names are not CompVis "
                         f"AutoencoderKL names{_prefix_hint(unknown)}: {_fmt(unknown)}")
    return out

"""LoRA files of the SD-v1 / Wukong-Huahua world -> adapters on our layers (pure numpy).

Formats read (tensor names; ``X`` is a layer):

* **MindPet / ours** (the original Wukong-Huahua LoRA training, ``wkhh_txt2img_lora-*.ckpt``, and
  :func:`mind_diffusion.ldm.lora.save_lora`): ``X.tk_delta_lora_a`` [r, in] and
  ``X.tk_delta_lora_b`` [out, r] with ``X`` our full layer name
  (``model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k``); newer MindPet
  names them ``mindpet_delta_lora_a/b``. Scale ``alpha / r`` with alpha from the file's
  ``meta.lora`` entry, else the config's ``lora_alpha``.
* **kohya / A1111** (``.safetensors``): ``lora_unet_<diffusers or CompVis module with _>`` and
  ``lora_te_<HF CLIP module with _>`` + ``.lora_down.weight`` [r, in(, kh, kw)],
  ``.lora_up.weight`` [out, r(, 1, 1)], ``.alpha`` (scale ``alpha / r``; absent: 1).
* **diffusers** (``pytorch_lora_weights.safetensors``): ``unet.<module>`` /
  ``text_encoder.<module>`` with peft's ``.lora_A.weight`` / ``.lora_B.weight`` or the older
  ``.lora.down.weight`` / ``.lora.up.weight``, ``.lora_linear_layer.down/up.weight`` and
  ``<attn>.processor.to_q_lora.down.weight``; the scale comes from an ``.alpha`` tensor, else
  from the safetensors header ``lora_adapter_metadata`` (peft ``lora_alpha`` / ``r``, with its
  ``alpha_pattern`` / ``rank_pattern``), else 1.

Module names are mapped through the SD name maps of this package (ours <-> CompVis <-> diffusers
UNet, HF CLIP text) into a table built from the model's own parameters, so a file for another
base (SD-2.x, SDXL, another width) shows up as unknown names or misshapen tensors.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from .convert_unet import compvis_unet_config_to_diffusers, compvis_unet_to_diffusers, ours_to_compvis_unet
from .io import CheckpointError


class LoRAFileError(CheckpointError):
    """A LoRA file cannot be used with this model; the message says why in one line."""


@dataclass
class LoRAAdapter:
    """``W[rows] += scale * up @ down`` on the layer ``target`` (our full layer name)."""

    target: str
    down: np.ndarray            # [r, in * kh * kw]
    up: np.ndarray              # [out_rows, r]
    alpha: float
    rows: tuple | None = None   # (start, stop) rows of a fused weight (CLIP q/k/v in in_proj)
    source: str = ""            # the module name in the file (messages)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def delta(self) -> np.ndarray:
        """``scale * up @ down`` in float64, [out_rows, in * kh * kw]."""
        return self.scale * (self.up.astype(np.float64) @ self.down.astype(np.float64))


@dataclass
class LayerInfo:
    """What the table knows of one of our layers."""

    target: str
    shape: tuple                 # the base weight's shape
    rows: tuple | None = None


@dataclass
class ParsedLoRA:
    format: str
    adapters: list = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    # (ids, rows [k, width] float32, token text) of trained identifier embedding rows, or None
    token_rows: tuple | None = None


# ------------------------------------------------------------------------------ name table

_TEXT_BLOCK = {"self_attn.out_proj": "attn.attn.out_proj", "mlp.fc1": "c_fc", "mlp.fc2": "c_proj"}
_QKV = ("q_proj", "k_proj", "v_proj")


def _add(table: dict, names, info: LayerInfo):
    for n in names:
        table[n] = info


def lora_name_table(weights: Mapping[str, tuple], unet_prefix: str, unet_cfg: Mapping | None = None,
                    text_prefix: str | None = None) -> dict:
    """{module name in any supported format: LayerInfo} for the model whose parameter shapes are
    ``weights`` ({full name: shape}). ``unet_prefix``: where the UNet's names start
    (``model.diffusion_model.``); ``unet_cfg``: its ``LDMUNet`` options (for the diffusers
    layout); ``text_prefix``: where our text encoder's names start (``cond_stage_model.
    transformer.``), None for none."""
    table: dict = {}
    # every weight of rank >= 2 is a layer a LoRA may adapt (ours / MindPet names)
    for name, shape in weights.items():
        if name.endswith(".weight") and len(shape) >= 2:
            _add(table, [name[: -len(".weight")]], LayerInfo(name[: -len(".weight")], tuple(shape)))
    unet = {n[len(unet_prefix):]: np.zeros(0) for n, s in weights.items()
            if n.startswith(unet_prefix) and n.endswith(".weight") and len(s) >= 2}
    if unet:
        cv = ours_to_compvis_unet(unet)
        ours_of_cv = dict(zip(cv, unet))
        dcfg = compvis_unet_config_to_diffusers({k: v for k, v in dict(unet_cfg or {}).items()})
        diff = compvis_unet_to_diffusers(cv, dcfg)
        cv_of_diff = dict(zip(diff, cv))
        for d_name, cv_name in cv_of_diff.items():
            ours = unet_prefix + ours_of_cv[cv_name]
            info = table[ours[: -len(".weight")]]
            d_mod, cv_mod = d_name[: -len(".weight")], cv_name[: -len(".weight")]
            _add(table, [d_mod, "unet." + d_mod, "lora_unet_" + d_mod.replace(".", "_"),
                         "lora_unet_" + cv_mod.replace(".", "_"), ours[len(unet_prefix): -len(".weight")]], info)
    if text_prefix is not None:
        res = re.compile(re.escape(text_prefix) + r"transformer_layer\.resblocks\.(\d+)\.attn\.attn\.in_proj\.weight$")
        for name, shape in weights.items():
            m = res.match(name)
            if not m:
                continue
            i, width = int(m.group(1)), int(shape[1])
            block = f"{text_prefix}transformer_layer.resblocks.{i}."
            hf = f"text_model.encoder.layers.{i}."
            for j, q in enumerate(_QKV):
                info = LayerInfo(block + "attn.attn.in_proj", tuple(shape), (j * width, (j + 1) * width))
                _add(table, _text_names(hf + "self_attn." + q), info)
            for hf_mod, ours in _TEXT_BLOCK.items():
                full = block + ours
                _add(table, _text_names(hf + hf_mod), LayerInfo(full, tuple(weights[full + ".weight"])))
    return table


def _text_names(hf_module: str) -> list:
    flat = hf_module.replace(".", "_")
    return [hf_module, "text_encoder." + hf_module, "lora_te_" + flat, "lora_te1_" + flat]


# ------------------------------------------------------------------------------ key parsing

_MINDPET = re.compile(r"^(?P<m>.+)\.(?:tk|mindpet)_delta_lora_(?P<k>[ab])$", re.IGNORECASE)
_PATTERNS = [  # (regex, kind); the module is group "m"
    (re.compile(r"^(?P<m>.+)\.lora_A(?:\.default)?\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora_B(?:\.default)?\.weight$"), "up"),
    (re.compile(r"^(?P<m>.+)\.lora_down\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora_up\.weight$"), "up"),
    (re.compile(r"^(?P<m>.+)\.lora(?:_linear_layer)?\.down\.weight$"), "down"),
    (re.compile(r"^(?P<m>.+)\.lora(?:_linear_layer)?\.up\.weight$"), "up"),
    (re.compile(r"^(?P<m>.+)\.alpha$"), "alpha"),
]
# diffusers attention-processor LoRA (<attn>.processor.to_q_lora.down.weight) and the old text
# encoder spelling (self_attn.to_q_lora.down.weight)
_PROC = re.compile(r"^(?P<a>.+?)(?P<p>\.processor)?\.(?P<t>to_q|to_k|to_v|to_out)_lora\.(?P<k>down|up)\.weight$")
_UNSUPPORTED = ((re.compile(r"dora_scale|lora_magnitude_vector"), "DoRA"),
                (re.compile(r"\.lora_mid\."), "LoCon/LyCORIS (CP)"),
                (re.compile(r"\.hada_"), "LyCORIS LoHa"), (re.compile(r"\.lokr_"), "LyCORIS LoKr"),
                (re.compile(r"\.diff(?:_b)?$"), "LyCORIS full-diff"))


def _proc_module(m) -> str:
    attn, t = m.group("a"), m.group("t")
    if m.group("p") is None and ".self_attn" in attn + ".":  # text encoder: q_proj ... out_proj
        return f"{attn}.{t[3:]}_proj"
    return f"{attn}.{'to_out.0' if t == 'to_out' else t}"


def split_lora_keys(state: Mapping[str, np.ndarray], path: str) -> tuple[str, dict]:
    """(format, {module: {"down"|"up"|"alpha": array}}) for a LoRA file's tensors."""
    names = list(state)
    for marker, what in _UNSUPPORTED:
        hit = next((n for n in names if marker.search(n)), None)
        if hit:
            raise LoRAFileError(f"{path} is a {what} file ({hit}); only plain LoRA (down/up[/alpha]) "
                                f"files are supported")
    modules: dict = {}
    fmt = None
    unknown = []
    for n in names:
        m = _MINDPET.match(n)
        if m:
            kind, f = ("down" if m.group("k").lower() == "a" else "up"), "mindpet"
            module = m.group("m")
        else:
            m = _PROC.match(n)
            if m:
                module, kind, f = _proc_module(m), m.group("k"), "diffusers"
            else:
                for regex, kind in _PATTERNS:
                    m = regex.match(n)
                    if m:
                        module = m.group("m")
                        f = "kohya" if module.startswith(("lora_unet_", "lora_te")) else "diffusers"
                        break
                else:
                    unknown.append(n)
                    continue
        if kind != "alpha":
            fmt = fmt or f
        modules.setdefault(module, {})[kind] = np.asarray(state[n])
    if fmt is None:
        raise LoRAFileError(f"{path} holds no LoRA tensors (expected *.tk_delta_lora_a/b, kohya "
                            f"*.lora_down/lora_up.weight or diffusers *.lora_A/lora_B.weight; first names: "
                            f"{', '.join(names[:3]) or 'none'})")
    if unknown:
        raise LoRAFileError(f"{path}: {len(unknown)} tensors are not LoRA tensors of a known format "
                            f"(e.g. {', '.join(unknown[:3])})")
    half = [k for k, v in modules.items() if ("down" in v) != ("up" in v)]
    if half:
        raise LoRAFileError(f"{path}: {len(half)} layers have only one of the two LoRA matrices "
                            f"(e.g. {half[0]}); the file is incomplete")
    orphans = [k for k, v in modules.items() if "down" not in v]
    if orphans:
        raise LoRAFileError(f"{path}: alpha without LoRA matrices for {orphans[0]}")
    return fmt, modules


def _peft_alpha(meta: Mapping, module: str, rank: int) -> float:
    """alpha for a module from diffusers' lora_adapter_metadata (peft LoraConfig fields)."""
    cfg = meta.get("lora_adapter_metadata")
    if not cfg:
        return float(rank)
    if isinstance(cfg, str):
        cfg = json.loads(cfg)
    # the metadata may be keyed per component ("unet.lora_alpha") or plain
    comp = module.split(".", 1)[0]
    sub = {k[len(comp) + 1:]: v for k, v in cfg.items() if k.startswith(comp + ".")} or cfg
    if sub.get("use_dora"):
        raise LoRAFileError("this diffusers LoRA uses DoRA (use_dora); only plain LoRA is supported")
    alpha = float(sub.get("lora_alpha", rank))
    for pat, val in (sub.get("alpha_pattern") or {}).items():
        if module.endswith(pat) or re.search(pat, module):
            alpha = float(val)
            break
    # rsLoRA scales by alpha / sqrt(r): the same as alpha * sqrt(r) over r
    return alpha * float(np.sqrt(rank)) if sub.get("use_rslora") else alpha


def parse_lora(state: Mapping[str, np.ndarray], table: Mapping[str, LayerInfo], path: str, *,
               meta: Mapping | None = None, default_alpha: float | None = None) -> ParsedLoRA:
    """A LoRA file's tensors -> adapters on our layers, shapes checked against ``table``."""
    meta = dict(meta or {})
    fmt, modules = split_lora_keys(state, path)
    ours_meta = meta.get("lora") if isinstance(meta.get("lora"), Mapping) else {}
    unknown, bad = [], []
    out = ParsedLoRA(fmt, meta=meta)
    for module, parts in modules.items():
        info = table.get(module)
        if info is None:
            unknown.append(module)
            continue
        down, up = np.asarray(parts["down"], np.float32), np.asarray(parts["up"], np.float32)
        r = down.shape[0]
        down2 = down.reshape(r, -1)
        up2 = up.reshape(up.shape[0], -1)
        out_rows = (info.rows[1] - info.rows[0]) if info.rows else info.shape[0]
        fan_in = int(np.prod(info.shape[1:]))
        if up2.shape != (out_rows, r) or down2.shape[1] != fan_in:
            bad.append(f"{module}: LoRA {list(up.shape)} x {list(down.shape)} vs layer {list(info.shape)}")
            continue
        if "alpha" in parts:
            alpha = float(np.asarray(parts["alpha"]).reshape(-1)[0])
        elif fmt == "mindpet":
            alpha = float(ours_meta.get("alpha", default_alpha if default_alpha is not None else r))
            layer_alpha = (ours_meta.get("layer_alpha") or {}).get(module)
            alpha = float(layer_alpha) if layer_alpha is not None else alpha
        elif fmt == "diffusers":
            alpha = _peft_alpha(meta, module, r)
        else:
            alpha = float(r)
        out.adapters.append(LoRAAdapter(info.target, down2, up2, alpha, info.rows, module))
    if unknown:
        raise LoRAFileError(
            f"LoRA {path} was made for another model: {len(unknown)} of its {len(modules)} layers are not "
            f"in this one (e.g. {unknown[0]}); use a LoRA trained on this base model")
    if bad:
        raise LoRAFileError(
            f"LoRA {path} was made for another base model: {len(bad)} of its {len(modules)} layers have "
            f"other shapes (e.g. {bad[0]})")
    return out

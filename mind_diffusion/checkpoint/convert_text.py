"""Name/layout converters between CLIP text-transformer checkpoints and :class:`TextEncoder`.

Pure numpy (no torch): every function takes ``{name: np.ndarray}`` and returns a new dict; the
arrays keep their dtype (``load_strict`` casts to the parameter dtype). Names returned for our
side are relative to :class:`mind_diffusion.ldm.text_encoder.TextEncoder` (no prefix; put
``cond_stage_model.transformer.`` in front for the full model), in its checkpoint order.

Layouts (Wukong-Huahua's ``ldm/modules/encoders/text_encoder.py`` against HF ``modeling_clip.py`` and
OpenAI ``clip/model.py``; Dense/Linear weights are [out, in] on both sides, so no transposes):

=================================================  =================================================
ours (MindSpore Wukong)                            HF ``CLIPTextModel`` (``text_model.`` + …)
=================================================  =================================================
``embedding_table``                                ``embeddings.token_embedding.weight``
``positional_embedding``                           ``embeddings.position_embedding.weight``
``ln_final.{gamma,beta}``                          ``final_layer_norm.{weight,bias}``
``transformer_layer.resblocks.i.attn.attn.``       ``encoder.layers.i.self_attn.{q,k,v}_proj.*``
``in_proj.{weight,bias}`` (rows q, k, v)           (concatenated along rows in that order)
``….attn.attn.out_proj.*``                         ``….self_attn.out_proj.*``
``….ln_1`` / ``….ln_2`` ``{gamma,beta}``           ``….layer_norm1`` / ``….layer_norm2`` ``{weight,bias}``
``….c_fc`` / ``….c_proj``                          ``….mlp.fc1`` / ``….mlp.fc2``
=================================================  =================================================

OpenAI CLIP / open_clip layout: ``token_embedding.weight``, ``positional_embedding``,
``ln_final.*``, ``transformer.resblocks.i.attn.in_proj_{weight,bias}``,
``….attn.out_proj.*``, ``….ln_1.*``, ``….mlp.c_fc.*``, ``….mlp.c_proj.*``, ``….ln_2.*``.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

__all__ = [
    "hf_clip_text_to_ours",
    "infer_text_encoder_config",
    "openai_clip_text_to_ours",
    "ours_to_hf_clip_text",
    "text_encoder_param_names",
]

_RES = "transformer_layer.resblocks."

# Per-block suffixes in our checkpoint order (in_proj handled separately for HF).
_BLOCK_ORDER = (
    "attn.attn.in_proj.weight", "attn.attn.in_proj.bias",
    "attn.attn.out_proj.weight", "attn.attn.out_proj.bias",
    "ln_1.gamma", "ln_1.beta",
    "c_fc.weight", "c_fc.bias",
    "c_proj.weight", "c_proj.bias",
    "ln_2.gamma", "ln_2.beta",
)

# ours block suffix -> HF block suffix (everything but in_proj)
_HF_BLOCK = {
    "attn.attn.out_proj.weight": "self_attn.out_proj.weight",
    "attn.attn.out_proj.bias": "self_attn.out_proj.bias",
    "ln_1.gamma": "layer_norm1.weight",
    "ln_1.beta": "layer_norm1.bias",
    "c_fc.weight": "mlp.fc1.weight",
    "c_fc.bias": "mlp.fc1.bias",
    "c_proj.weight": "mlp.fc2.weight",
    "c_proj.bias": "mlp.fc2.bias",
    "ln_2.gamma": "layer_norm2.weight",
    "ln_2.beta": "layer_norm2.bias",
}
_HF_QKV = ("q_proj", "k_proj", "v_proj")

_HF_TOP = {
    "embedding_table": "embeddings.token_embedding.weight",
    "positional_embedding": "embeddings.position_embedding.weight",
    "ln_final.gamma": "final_layer_norm.weight",
    "ln_final.beta": "final_layer_norm.bias",
}

# ours block suffix -> OpenAI block suffix
_OAI_BLOCK = {
    "attn.attn.in_proj.weight": "attn.in_proj_weight",
    "attn.attn.in_proj.bias": "attn.in_proj_bias",
    "attn.attn.out_proj.weight": "attn.out_proj.weight",
    "attn.attn.out_proj.bias": "attn.out_proj.bias",
    "ln_1.gamma": "ln_1.weight",
    "ln_1.beta": "ln_1.bias",
    "c_fc.weight": "mlp.c_fc.weight",
    "c_fc.bias": "mlp.c_fc.bias",
    "c_proj.weight": "mlp.c_proj.weight",
    "c_proj.bias": "mlp.c_proj.bias",
    "ln_2.gamma": "ln_2.weight",
    "ln_2.beta": "ln_2.bias",
}
_OAI_TOP = {
    "embedding_table": "token_embedding.weight",
    "positional_embedding": "positional_embedding",
    "ln_final.gamma": "ln_final.weight",
    "ln_final.beta": "ln_final.bias",
}


def text_encoder_param_names(layers: int) -> list:
    """Our TextEncoder parameter names, in checkpoint (save) order."""
    names = list(_HF_TOP)
    for i in range(layers):
        names += [f"{_RES}{i}.{s}" for s in _BLOCK_ORDER]
    return names


def _strip_prefix(state: Mapping[str, np.ndarray], prefix: str, what: str) -> dict[str, np.ndarray]:
    if not isinstance(state, Mapping):
        raise TypeError(f"{what}: expected a {{name: array}} mapping, got {type(state).__name__}")
    if not prefix:
        return dict(state)
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        sample = ", ".join(list(state)[:5])
        raise ValueError(f"{what}: no tensor name starts with prefix {prefix!r} "
                         f"(first names: {sample}); pass the prefix the checkpoint really uses")
    return out


def _layer_indices(names, pattern: re.Pattern, what: str) -> int:
    idx = sorted({int(m.group(1)) for m in map(pattern.match, names) if m})
    if idx != list(range(len(idx))):
        raise ValueError(f"{what}: transformer layer indices are not contiguous from 0: {idx}")
    return len(idx)


def _finish(out: dict, used: set, state: dict, dropped: set, what: str, missing: list) -> dict:
    unknown = sorted(set(state) - used - dropped)
    if unknown:
        more = f" ... and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        raise ValueError(f"{what}: unknown tensor names (not part of a CLIP text transformer "
                         f"in this layout): {unknown[:20]}{more}; wrong layout or prefix?")
    if missing:
        more = f" ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        raise ValueError(f"{what}: checkpoint is incomplete, missing {missing[:20]}{more}")
    return out


# --------------------------------------------------------------------------- HF CLIPTextModel
_HF_LAYER = re.compile(r"encoder\.layers\.(\d+)\.(.+)$")
# Keys of a full HF CLIPModel / CLIPTextModelWithProjection that a text encoder does not use.
_HF_DROP = re.compile(r"^(vision_model\.|visual_projection\.|text_projection\.|logit_scale$)")


def hf_clip_text_to_ours(state: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """HF ``CLIPTextModel`` state -> ours.

    ``prefix`` is stripped first and only names under it are used (CompVis SD-v1 checkpoints keep
    the text tower under ``cond_stage_model.transformer.text_model.…``: pass
    ``prefix="cond_stage_model.transformer."``, the rest of the file is ignored). Names must then
    start with ``text_model.`` (a bare ``CLIPTextTransformer`` state without it is accepted too).
    ``q/k/v_proj`` rows are concatenated into ``in_proj``; ``position_ids`` buffers are dropped,
    and so are the vision tower / projections / ``logit_scale`` of a full ``CLIPModel``.
    Unknown or missing names raise ``ValueError``.
    """
    what = "hf_clip_text_to_ours"
    st = _strip_prefix(state, prefix, what)
    tm = "text_model." if any(k.startswith("text_model.") for k in st) else ""
    # position_ids buffers and a full CLIPModel's extras are dropped; anything else outside
    # text_model. is reported as unknown.
    dropped = {k for k in st if k.endswith("position_ids") or _HF_DROP.match(k)}
    used: set = set()
    missing: list = []
    out: dict[str, np.ndarray] = {}

    def take(src):
        if tm + src in st:
            used.add(tm + src)
            return np.asarray(st[tm + src])
        missing.append(tm + src)
        return None

    for ours, src in _HF_TOP.items():
        out[ours] = take(src)
    body = [k[len(tm):] for k in st if k.startswith(tm) and k not in dropped]
    layers = _layer_indices(body, _HF_LAYER, what)
    for i in range(layers):
        base = f"encoder.layers.{i}."
        for kind in ("weight", "bias"):
            parts = [take(f"{base}self_attn.{p}.{kind}") for p in _HF_QKV]
            if all(p is not None for p in parts):
                out[f"{_RES}{i}.attn.attn.in_proj.{kind}"] = np.concatenate(parts, axis=0)
        for ours, src in _HF_BLOCK.items():
            out[f"{_RES}{i}.{ours}"] = take(base + src)
    _finish(out, used, st, dropped, what, missing)
    return {k: out[k] for k in text_encoder_param_names(layers)}


def ours_to_hf_clip_text(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Ours -> HF ``CLIPTextModel`` state (``text_model.…``; ``in_proj`` split into q/k/v rows).
    No ``position_ids`` buffer is emitted (HF recreates it)."""
    what = "ours_to_hf_clip_text"
    st = _strip_prefix(state, "", what)
    layers = _layer_indices(list(st), re.compile(re.escape(_RES) + r"(\d+)\.(.+)$"), what)
    expected = text_encoder_param_names(layers)
    missing = [n for n in expected if n not in st]
    out: dict[str, np.ndarray] = {}
    if not missing:
        for ours, src in _HF_TOP.items():
            out["text_model." + src] = np.asarray(st[ours])
        for i in range(layers):
            pre, base = f"{_RES}{i}.", f"text_model.encoder.layers.{i}."
            for kind in ("weight", "bias"):
                fused = np.asarray(st[f"{pre}attn.attn.in_proj.{kind}"])
                if fused.shape[0] % 3:
                    raise ValueError(f"{what}: {pre}attn.attn.in_proj.{kind} has {fused.shape[0]} rows, "
                                     f"not a multiple of 3 (q, k, v)")
                for name, part in zip(_HF_QKV, np.split(fused, 3, axis=0)):
                    out[f"{base}self_attn.{name}.{kind}"] = part
            for ours, src in _HF_BLOCK.items():
                out[base + src] = np.asarray(st[pre + ours])
    return _finish(out, set(expected), st, set(), what, missing)


# --------------------------------------------------------------------------- OpenAI CLIP
_OAI_LAYER = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)$")
# Not part of the text transformer: the image tower, the joint-embedding projection and logit
# scale (CLIP's contrastive head; SD / Wukong use the per-token hidden states, not the projected
# EOT feature), the scalar metadata of OpenAI's JIT archives, and open_clip's ``attn_mask`` buffer
# (we rebuild the causal mask).
_OAI_DROP = re.compile(r"^(visual\.|text_projection$|logit_scale$|input_resolution$|context_length$"
                       r"|vocab_size$|attn_mask$)")


def openai_clip_text_to_ours(state: Mapping[str, np.ndarray], prefix: str = "") -> dict[str, np.ndarray]:
    """OpenAI CLIP / open_clip state -> ours (the table in this module's docstring).

    ``prefix`` is stripped first and only names under it are used (e.g. SD-v2 / open_clip
    ``cond_stage_model.model.``). ``visual.*``, ``text_projection``, ``logit_scale``, the JIT
    archives' scalar entries and an ``attn_mask`` buffer are dropped: the conditioning uses the
    per-token output of ``ln_final``, not the projected EOT feature. Unknown or missing names
    raise ``ValueError``.
    """
    what = "openai_clip_text_to_ours"
    st = _strip_prefix(state, prefix, what)
    dropped = {k for k in st if _OAI_DROP.match(k)}
    layers = _layer_indices([k for k in st if k not in dropped], _OAI_LAYER, what)
    out, used, missing = {}, set(), []
    for ours in text_encoder_param_names(layers):
        if ours.startswith(_RES):
            i, suffix = ours[len(_RES):].split(".", 1)
            src = f"transformer.resblocks.{i}.{_OAI_BLOCK[suffix]}"
        else:
            src = _OAI_TOP[ours]
        if src in st:
            out[ours] = np.asarray(st[src])
            used.add(src)
        else:
            missing.append(src)
    return _finish(out, used, st, dropped, what, missing)


# --------------------------------------------------------------------------- config
def infer_text_encoder_config(state_ours: Mapping[str, np.ndarray]) -> dict:
    """``dict(vocab_size, context_length, width, layers)`` from our state's shapes.

    The number of heads cannot be read from shapes; pass it yourself (CLIP uses head_dim 64:
    ``heads = width // 64``, 12 for ViT-L/14's text tower). Raises ``ValueError`` when the state
    is not a TextEncoder state or its MLP is not 4x wide (the only ratio TextEncoder builds).
    """
    what = "infer_text_encoder_config"
    for key in ("embedding_table", "positional_embedding"):
        if key not in state_ours:
            raise ValueError(f"{what}: {key!r} missing; is this a TextEncoder state (convert it "
                             f"with hf_clip_text_to_ours / openai_clip_text_to_ours first)?")
    emb = np.shape(state_ours["embedding_table"])
    pos = np.shape(state_ours["positional_embedding"])
    if len(emb) != 2 or len(pos) != 2 or emb[1] != pos[1]:
        raise ValueError(f"{what}: embedding_table {emb} and positional_embedding {pos} must be "
                         f"[vocab, width] and [context, width]")
    layers = _layer_indices(list(state_ours), re.compile(re.escape(_RES) + r"(\d+)\.(.+)$"), what)
    width = int(emb[1])
    for i in range(layers):
        fc = np.shape(state_ours.get(f"{_RES}{i}.c_fc.weight", ()))
        if fc != (4 * width, width):
            raise ValueError(f"{what}: {_RES}{i}.c_fc.weight has shape {fc}, TextEncoder needs "
                             f"({4 * width}, {width}) (MLP 4x width)")
    return {"vocab_size": int(emb[0]), "context_length": int(pos[0]), "width": width, "layers": layers}

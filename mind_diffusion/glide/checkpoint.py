"""GLIDE checkpoints: the official Taichu-GLIDE files and our own saves, strictly.

Our cells carry the official relative names (those of Taichu-GLIDE's ``text2im_model.py`` /
``srgan.py`` cells), so the declared name map is only a prefix:

* ``glide_gen.ckpt`` / ``glide_super_res.ckpt`` (training net ``GaussianDiffusion``):
  ``diffusion_with_p_sample.p_mean_variance.guider_net.<rel>`` (:data:`TRAINING_PREFIX`);
* the same after Taichu's inference-time rewrite (``txt2img.load_ckpt``): base
  ``p_mean_variance.guider_net.model.<rel>``, SR ``p_mean_variance.guider_net.<rel>``
  (:data:`INFERENCE_PREFIXES`); both are accepted for either model;
* ``<rel>`` bare (a net saved directly);
* ``srgan.ckpt``: bare ``Generator`` names (``conv1.0.weight``, ``trunk.0.bn1.moving_mean``, …).

Training-state entries of ``OPT_glide-*.ckpt`` files (optimizer moments, step, loss scale; see
:data:`TRAINING_STATE_PREFIXES` / :data:`TRAINING_STATE_NAMES`) are ignored. The positional and
padding embeddings are stored as fp16 in the official files; they are cast to our fp32
parameters on load and written back as fp16 by :func:`save_glide_checkpoint`. Anything
missing, unexpected or misshapen raises ``CheckpointMismatchError`` listing the tensors; a file
of another model (the SR file given as the base, an SRGAN or LDM file, ...) raises a
``CheckpointError`` with a one-line message saying which file goes where.

:func:`openai_key` maps a relative name to the OpenAI glide-text2im PyTorch key (the manifest's
``relative_to_openai_glide_text2im_key``); 1x1 attention conv weights are ``[o, i, 1, 1]`` here and
``[o, i, 1]`` there.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..checkpoint.io import (
    CheckpointError,
    CheckpointMismatchError,
    LoadReport,
    load_strict,
    read_checkpoint,
    save_atomic,
)

__all__ = [
    "FP16_PARAMS",
    "INFERENCE_PREFIXES",
    "KINDS",
    "OFFICIAL_FILES",
    "TRAINING_PREFIX",
    "detect_kind",
    "expert_state",
    "glide_state",
    "grown_attention_names",
    "is_attention_tensor",
    "kind_of",
    "load_base_expert",
    "load_grown_attention",
    "load_glide_checkpoint",
    "openai_key",
    "save_glide_checkpoint",
]

KINDS = ("base", "sr", "srgan")
TRAINING_PREFIX = "diffusion_with_p_sample.p_mean_variance.guider_net."
INFERENCE_PREFIXES = {"base": "p_mean_variance.guider_net.model.", "sr": "p_mean_variance.guider_net."}
# longest first: the SR inference prefix is a prefix of the base one
UNET_PREFIXES = (TRAINING_PREFIX, INFERENCE_PREFIXES["base"], INFERENCE_PREFIXES["sr"])
OFFICIAL_FILES = {"base": "glide_gen.ckpt", "sr": "glide_super_res.ckpt", "srgan": "srgan.ckpt"}
DESCRIPTION = {"base": "GLIDE base model (64 px)", "sr": "GLIDE super-resolution model (64 -> 256)",
               "srgan": "SRGAN x4 generator (256 -> 1024)"}
# Stored as fp16 by the original (created in the model dtype); fp32 parameters here.
FP16_PARAMS = ("positional_embedding", "padding_embedding")
# Optimizer / loss-scale state of training checkpoints (MindSpore 2.x and, probably, 1.8 names).
TRAINING_STATE_PREFIXES = ("optimizer.", "adam_m.", "adam_v.", "moments.", "moment1.", "moment2.",
                           "accum.", "loss_scaling_manager.", "meta.")
TRAINING_STATE_NAMES = ("global_step", "scale_sense", "learning_rate", "beta1_power", "beta2_power",
                        "current_iterator_step", "epoch_num", "step_num", "loss_scale",
                        "cur_iter", "last_overflow_iter", "scale_good_steps")
LDM_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")


def kind_of(net) -> str:
    from .srgan import SRGANGenerator
    from .unet import GlideSuperResUNet, GlideText2ImUNet

    if isinstance(net, GlideSuperResUNet):
        return "sr"
    if isinstance(net, GlideText2ImUNet):
        return "base"
    if isinstance(net, SRGANGenerator):
        return "srgan"
    raise TypeError(f"not a GLIDE network: {type(net).__name__} (expected GlideText2ImUNet, "
                    f"GlideSuperResUNet or SRGANGenerator)")


def _resolve_kind(net, kind: str | None) -> str:
    actual = kind_of(net)
    if kind is None:
        return actual
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind != actual:
        raise ValueError(f"kind={kind!r} does not match the network ({type(net).__name__} is the "
                         f"{DESCRIPTION[actual]}, kind={actual!r})")
    return kind


def is_training_state(name: str) -> bool:
    return name.startswith(TRAINING_STATE_PREFIXES) or name in TRAINING_STATE_NAMES


def strip_unet_prefix(name: str) -> str:
    for prefix in UNET_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def detect_kind(state: Mapping[str, np.ndarray]) -> str | None:
    """'base', 'sr', 'srgan', 'ldm' or None (unknown) from a checkpoint's names and shapes."""
    names = [n for n in state if not is_training_state(n)]
    if any(n.startswith(LDM_PREFIXES) for n in names):
        return "ldm"
    rel = {strip_unet_prefix(n): n for n in names}
    conv_in = rel.get("input_blocks.0.0.conv.weight")
    if conv_in is not None and "transformer_proj.weight" in rel:
        shape = np.shape(state[conv_in])
        if len(shape) == 4:
            return "sr" if shape[1] == 6 else "base"
    if "conv1.0.weight" in rel and any(n.startswith("subpixel_conv.") for n in rel):
        return "srgan"
    return None


def _wrong_model(where: str, found: str, kind: str) -> CheckpointError:
    if found == "ldm":
        what = "a latent-diffusion (Wukong-Huahua / Stable Diffusion) checkpoint"
    else:
        what = f"the {DESCRIPTION[found]} checkpoint ({OFFICIAL_FILES[found]}, kind='{found}')"
    return CheckpointError(
        f"{where} is {what}, not the {DESCRIPTION[kind]} ({OFFICIAL_FILES[kind]}, kind='{kind}'): "
        f"give each file to its own stage (base: {OFFICIAL_FILES['base']}, SR: "
        f"{OFFICIAL_FILES['sr']}, SRGAN: {OFFICIAL_FILES['srgan']})")


def load_glide_checkpoint(net, path_or_state, kind: str | None = None, *,
                          dry_run: bool = False) -> LoadReport:
    """Strictly load an official or own GLIDE checkpoint (a path or a {name: array} dict).

    ``kind`` ('base' | 'sr' | 'srgan') defaults to the network's; a mismatch is an error.
    Returns the ``LoadReport`` (``report.ignored``: the training-state names skipped,
    ``report.cast``: the tensors cast, e.g. the fp16 embeddings)."""
    kind = _resolve_kind(net, kind)
    if isinstance(path_or_state, Mapping):
        state, where = path_or_state, "the given state"
    else:
        where = str(path_or_state)
        state = read_checkpoint(path_or_state, f"{DESCRIPTION[kind]} checkpoint")
    ignored = [n for n in state if is_training_state(n)]
    model_state = {n: v for n, v in state.items() if not is_training_state(n)}
    found = detect_kind(model_state)
    if found is not None and found != kind:
        raise _wrong_model(where, found, kind)
    name_map = None if kind == "srgan" else strip_unet_prefix
    ours = {p.name for p in net.get_parameters()}
    if not any((name_map(n) if name_map else n) in ours for n in model_state):
        sample = ", ".join(list(model_state)[:3]) or "none"
        raise CheckpointError(f"{where} holds none of the {DESCRIPTION[kind]}'s tensors "
                              f"({len(model_state)} tensors, first: {sample}); expected "
                              f"{OFFICIAL_FILES[kind]} or a file saved by save_glide_checkpoint")
    try:
        report = load_strict(net, model_state, name_map=name_map, path=where, dry_run=dry_run)
    except CheckpointMismatchError as exc:
        hint = ""
        for name, ck_shape, our_shape in exc.report.mismatched:
            if name == "token_embedding.embedding_table":
                hint = (f" (token_embedding has {ck_shape[0]} rows in the file and {our_shape[0]} "
                        f"in the model: set n_vocab={ck_shape[0]})")
        raise CheckpointMismatchError(exc.report, where + hint) from None
    report.ignored = ignored  # type: ignore[attr-defined]
    return report


_BLOCK_TENSOR = re.compile(r"^(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.+)$")
_ATTENTION_TENSORS = ("norm.", "qkv.", "encoder_kv.", "proj_out.")


def is_attention_tensor(name: str) -> bool:
    """A tensor of an attention block inside the UNet's input or output blocks (unprefixed name)."""
    m = _BLOCK_TENSOR.match(name)
    return bool(m) and m.group(4).startswith(_ATTENTION_TENSORS)


def _block_layers(names) -> dict:
    """{(part, block): {layer: 'attention' | 'other'}} of UNet tensor names (unprefixed)."""
    out: dict = {}
    for name in names:
        m = _BLOCK_TENSOR.match(name)
        if m:
            kind = "attention" if is_attention_tensor(name) else "other"
            out.setdefault((m.group(1), int(m.group(2))), {})[int(m.group(3))] = kind
    return out


def grown_attention_names(src_names, dst_names, where: str = "the checkpoint") -> tuple[dict, list]:
    """Map the tensor names of a UNet checkpoint (``src_names``, released or bare) onto a network whose
    tensors are ``dst_names`` (bare): the same UNet with attention blocks added (a longer
    ``attention_resolutions``). In a block that gains one, the layers after it move one place on
    (``output_blocks.7.1.*``, the upsampling ResBlock, becomes ``output_blocks.7.2.*``).

    Returns ``({src name: dst name}, [dst names that no src tensor fills])``; the latter are the added
    blocks' tensors, which start at their initial weights (``proj_out`` zero: each added block is the
    identity, so the grown network computes what the checkpoint's did). Any other difference (a layer
    the network lacks, a block that is not attention) is a ``CheckpointError``."""
    bare = {strip_unet_prefix(n): n for n in src_names}
    src, dst = _block_layers(bare), _block_layers(dst_names)
    if set(src) != set(dst):
        raise CheckpointError(f"{where} has other UNet blocks than the network ({len(src)} against {len(dst)}): "
                              f"it is not this network with fewer attention blocks (check model.net)")
    moved = {}
    for key, layers in dst.items():
        have = sorted(src[key].items())
        i = 0
        for j, kind in sorted(layers.items()):
            if i < len(have) and have[i][1] == kind:
                moved[(key, have[i][0])] = j
                i += 1
            elif kind != "attention":
                raise CheckpointError(f"{where}: {key[0]}.{key[1]} of the network has a {kind} layer {j} that "
                                      f"the file lacks; only attention blocks can be added")
        if i < len(have):
            raise CheckpointError(f"{where}: {key[0]}.{key[1]}.{have[i][0]} ({have[i][1]}) has no place in the "
                                  f"network; only attention blocks can be added, not removed")
    rename = {}
    for name, src_name in bare.items():
        m = _BLOCK_TENSOR.match(name)
        if m:
            key = (m.group(1), int(m.group(2)))
            name = f"{key[0]}.{key[1]}.{moved[(key, int(m.group(3)))]}.{m.group(4)}"
        rename[src_name] = name
    filled = set(rename.values())
    added = [n for n in dst_names if n not in filled]
    lacking = [n for n in added if not is_attention_tensor(n)]
    if lacking:
        raise CheckpointError(f"{where} lacks {len(lacking)} of the network's tensors that are not in an added "
                              f"attention block: {', '.join(lacking[:4])}{' ...' if len(lacking) > 4 else ''}")
    return rename, added


def load_grown_attention(net, path_or_state, kind: str = "base") -> tuple[LoadReport, list]:
    """Load a GLIDE checkpoint into ``net``, the same UNet with attention blocks added
    (:func:`grown_attention_names`): strict on every tensor the file has; the added blocks keep their
    initial weights (identity). Returns (report, the added blocks' tensor names)."""
    if isinstance(path_or_state, Mapping):
        state, where = path_or_state, "the given state"
    else:
        where = str(path_or_state)
        state = read_checkpoint(path_or_state, f"{DESCRIPTION[kind]} checkpoint")
    model_state = {n: v for n, v in state.items() if not is_training_state(n)}
    found = detect_kind(model_state)
    if found is not None and found != kind:
        raise _wrong_model(where, found, kind)
    rename, added = grown_attention_names(model_state, [p.name for p in net.get_parameters()], where)
    report = load_strict(net, {rename[n]: v for n, v in model_state.items()}, allow_missing=added, path=where)
    return report, added


def load_base_expert(net, path_or_state) -> LoadReport:
    """Overlay a base model's low-noise expert on ``net``, which already holds the base it was trained
    from: the expert file (``glide_gen_expert.ckpt``, :func:`expert_state`) holds only the tensors that
    training changed, in the released names. Every tensor it holds must be one of the base network's,
    of the same shape (a ``CheckpointMismatchError`` lists the others); the rest stay the base's."""
    if isinstance(path_or_state, Mapping):
        state, where = path_or_state, "the given expert state"
    else:
        where = str(path_or_state)
        state = read_checkpoint(path_or_state, "base model's low-noise expert checkpoint")
    model_state = {n: v for n, v in state.items() if not is_training_state(n)}
    if not model_state:
        raise CheckpointError(f"{where} holds no tensors: a low-noise expert file holds the base tensors its "
                              f"training changed (scripts/package_glide_shapes.py --base_expert writes one)")
    names = [p.name for p in net.get_parameters()]
    report = load_strict(net, model_state, name_map=strip_unet_prefix, allow_missing=names, path=where)
    report.names = [strip_unet_prefix(n) for n in model_state]  # type: ignore[attr-defined]
    return report


def expert_state(expert: Mapping, base: Mapping) -> dict:
    """The tensors of a full expert checkpoint ``expert`` that differ from ``base`` (both {name: array}
    in one layout; compared at the expert's dtype), the content of its expert file. An expert whose
    network adds attention blocks to the base's (``model.base_expert.attention_resolutions``) is compared
    through :func:`grown_attention_names`, and the added blocks are stored whole. Other names that are not
    in both, or shapes that differ, are a ``CheckpointError``: the expert was trained from another base."""
    out = {}
    names = [n for n in expert if not is_training_state(n)]
    if any(n not in base for n in names):
        # an expert whose network adds attention blocks to the base's (model.base_expert): the base's
        # tensors under the expert's names; the added blocks' tensors are all stored
        bare = {strip_unet_prefix(n): n for n in names}
        try:
            rename, _ = grown_attention_names([n for n in base if not is_training_state(n)], list(bare),
                                              "the base")
        except CheckpointError as exc:
            raise CheckpointError(f"the expert's tensors are not the base's (nor the base's with attention blocks "
                                  f"added: {exc}): it was trained from another base model") from None
        lost = [n for n in rename if rename[n] not in bare]
        if lost:
            raise CheckpointError(f"the expert lacks the base's {lost[0]} ({len(lost)} in all): it was trained "
                                  f"from another base model")
        base = {bare[rename[n]]: v for n, v in base.items() if n in rename}
    for name in names:
        value = expert[name]
        if name not in base:
            out[name] = np.asarray(value)
            continue
        if np.shape(base[name]) != np.shape(value):
            raise CheckpointError(f"the expert's {name} {np.shape(value)} is not a tensor of the base "
                                  f"({np.shape(base[name])}): it was trained from another base model")
        arr = np.asarray(value)
        if not np.array_equal(arr, np.asarray(base[name]).astype(arr.dtype)):
            out[name] = arr
    return out


def glide_state(net, kind: str | None = None, layout: str = "training",
                fp16_embeddings: bool = True, tensors: bool = False, values: dict | None = None) -> dict:
    """{checkpoint name: array} of ``net`` in the official layout.

    ``layout``: 'training' (the released files' names), 'inference' (Taichu's rewritten names)
    or 'bare'; SRGAN names are always bare. ``fp16_embeddings``: store the positional / padding
    embeddings as fp16 like the original (default). ``tensors``: the Parameters themselves instead of
    numpy copies (only the small fp16 embeddings are converted), for ``save_atomic``, which writes
    one tensor at a time. ``values``: {parameter name: tensor} taken instead of the net's own
    (an EMA's weights), named and converted the same way."""
    kind = _resolve_kind(net, kind)
    layouts = ("training", "inference", "bare")
    if layout not in layouts:
        raise ValueError(f"layout must be one of {layouts}, got {layout!r}")
    prefix = ""
    if kind != "srgan":
        prefix = {"training": TRAINING_PREFIX, "inference": INFERENCE_PREFIXES[kind], "bare": ""}[layout]
    out = {}
    for p in net.get_parameters():
        value = p if values is None else values.get(p.name, p)
        fp16 = fp16_embeddings and kind != "srgan" and p.name in FP16_PARAMS
        if fp16 or not tensors:
            value = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
            value = value.astype(np.float16) if fp16 else value
        out[prefix + p.name] = value
    return out


def save_glide_checkpoint(net, path: str | Path, kind: str | None = None, layout: str = "training",
                          fp16_embeddings: bool = True) -> Path:
    """Write ``net`` atomically in the official layout (see :func:`glide_state`), handing MindSpore
    the Parameters themselves (no host copy of the weights)."""
    return save_atomic(glide_state(net, kind, layout, fp16_embeddings, tensors=True), path)


_OPENAI_RULES = (
    (re.compile(r"^token_embedding\.embedding_table$"), "token_embedding.weight"),
    (re.compile(r"^out2\.conv\."), "out.2."),
    (re.compile(r"\.conv\."), "."),
    (re.compile(r"\b(in_layers|out_layers)_(\d+)\."), r"\1.\2."),
    (re.compile(r"\.gamma$"), ".weight"),
    (re.compile(r"\.beta$"), ".bias"),
)


def openai_key(rel: str) -> str:
    """Relative MindSpore name -> OpenAI glide-text2im PyTorch key (UNets and text transformer)."""
    key = rel
    for pattern, repl in _OPENAI_RULES:
        key = pattern.sub(repl, key)
    return key

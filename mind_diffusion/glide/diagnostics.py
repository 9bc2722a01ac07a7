"""Where a GLIDE model's eps prediction has skill, by scale, and whether it follows its input's mean
colour: the probe behind the built-in GLIDE's model card (``scripts/probe_glide_mean_colour.py``).

- ``scale_errors(err, pools)``: the squared eps error per pixel and of its ``k x k`` block means
  scaled by ``k^2``. The block means of standard-normal noise have variance ``1 / k^2``, so each
  scaled value is 1 for a prediction with no skill at that scale (it predicts 0 there) and 0 for
  a perfect one; values above 1 mean worse than predicting nothing.
- ``mean_colour_slope(eps_fn, x, t)``: how far the predicted eps's per-channel mean moves when the
  same constant is added to the whole input, per unit of that constant. Near ``t = T`` the eps
  target is ``x_t`` itself up to ``sqrt(abar_t)`` (3e-3 at ``t = 995`` of the linear chain), so the
  right slope there is ~1; a slope near 0 means the model is blind to its input's mean colour and
  sampling keeps, and amplifies, the starting noise's mean colour.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np


def scale_errors(err: np.ndarray, pools: Sequence[int]) -> dict[int, float]:
    """``{1: mean(err^2), k: k^2 * mean(blockmean_k(err)^2) for k in pools}`` for ``err`` (B, C, H, W)."""
    err = np.asarray(err, np.float64)
    if err.ndim != 4:
        raise ValueError(f"err must be (batch, channels, height, width), got shape {err.shape}")
    b, c, h, w = err.shape
    out = {1: float(np.square(err).mean())}
    for k in pools:
        k = int(k)
        if k < 1 or h % k or w % k:
            raise ValueError(f"pool {k} does not divide the {h}x{w} images")
        blocks = err.reshape(b, c, h // k, k, w // k, k).mean(axis=(3, 5))
        out[k] = float(k * k * np.square(blocks).mean())
    return out


def mean_colour_slope(eps_fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                      delta: float = 0.3) -> np.ndarray:
    """Per-channel d mean(eps_fn(x + c)) / d c, by the central difference at ``c = +-delta``,
    averaged over the batch. ``eps_fn`` maps (B, 3, H, W) float32 to the predicted eps (B, >=3, H, W)."""
    if delta <= 0:
        raise ValueError(f"delta must be > 0, got {delta}")
    x = np.asarray(x, np.float32)
    lo = np.asarray(eps_fn((x - delta).astype(np.float32)), np.float64)[:, :3].mean(axis=(0, 2, 3))
    hi = np.asarray(eps_fn((x + delta).astype(np.float32)), np.float64)[:, :3].mean(axis=(0, 2, 3))
    return (hi - lo) / (2.0 * delta)


def select_weights(state: dict, weights: str = "ema") -> tuple[dict, str]:
    """The network tensors of a checkpoint: a training checkpoint's EMA copy (``ema.<name>``) or its
    raw weights, or an exported file as it is. Returns (state, what was taken)."""
    if weights not in ("ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}")
    ema = {k[len("ema."):]: v for k, v in state.items() if k.startswith("ema.")}
    rest = {k: v for k, v in state.items() if not k.startswith("ema.")}
    if weights == "ema" and ema:
        # a run with train.frozen_prefixes keeps no EMA copy of the tensors it held: those are the raw ones
        from .checkpoint import is_training_state

        held = {k: v for k, v in rest.items() if k not in ema and not is_training_state(k)}
        return {**held, **ema}, "EMA weights of a training checkpoint" + (
            f" ({len(held)} held tensor{'s' if len(held) != 1 else ''} without an EMA copy: raw)" if held else "")
    if weights == "ema":
        return rest, "the file's weights (it holds no EMA copy)"
    return rest, "raw (non-EMA) weights"


def _noised(x0: np.ndarray, abar: np.ndarray, t: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(noise, x_t float32) for ``x0`` at step ``t`` of the chain ``abar``, one draw of ``rng``."""
    if not 0 <= t < len(abar):
        raise ValueError(f"timestep {t} is outside the {len(abar)}-step chain")
    noise = rng.standard_normal(x0.shape)
    return noise, (np.sqrt(abar[t]) * x0 + np.sqrt(1.0 - abar[t]) * noise).astype(np.float32)


def probe_rows(eps_fn: Callable[[np.ndarray, int], np.ndarray], x0: np.ndarray, alphas_cumprod,
               timesteps: Sequence[int], pools: Sequence[int], seed: int = 0, delta: float = 0.3) -> list[dict]:
    """One row per ``t``: ``scale_errors`` of ``eps_fn(x_t, t)`` against the noise that made ``x_t``
    from ``x0`` (B, 3, H, W in [-1, 1]) and the mean-colour slope at that ``x_t``."""
    abar = np.asarray(alphas_cumprod, np.float64)
    x0 = np.asarray(x0, np.float64)
    rng = np.random.default_rng(seed)
    rows = []
    for t in timesteps:
        t = int(t)
        noise, xt = _noised(x0, abar, t, rng)
        step = lambda x, t=t: eps_fn(x, t)  # noqa: E731
        eps = np.asarray(step(xt), np.float64)[:, :3]
        row = {"t": t}
        for k, v in scale_errors(noise - eps, pools).items():
            row["pix" if k == 1 else f"pool{k}"] = v
        for name, s in zip("RGB", mean_colour_slope(step, xt, delta)):
            row[f"slope_{name}"] = float(s)
        rows.append(row)
    return rows


def rows_markdown(rows: list[dict]) -> str:
    cols = list(rows[0])
    head = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    fmt = lambda v: str(v) if isinstance(v, int) else f"{v:.4f}"  # noqa: E731
    return head + "".join("| " + " | ".join(fmt(r[c]) for c in cols) + " |\n" for r in rows)


# ------------------------------------------------------------------------- caption probe
#: The place each of the shapes world's places is swapped to (left <-> right, top <-> bottom, middle -> left);
#: a caption's variant words (左侧, 上方, ...: ``CAPTION_PLACE_WORDS``) map as their canonical word.
_PLACE_SWAP = {"左边": "右边", "右边": "左边", "上面": "下面", "下面": "上面", "中间": "左边"}
CAPTION_VARIANTS = ("true", "place", "colour", "shape", "empty")


def swap_caption(caption: str, what: str) -> str:
    """The shapes-world ``caption`` with every object's place (``"place"``), colour (``"colour"``:
    the ``X色的`` of objects, each moved three steps along the colour ring, so the background's
    colour stays) or shape (``"shape"``: one step along 圆形 -> 正方形 -> 三角形 -> 星形) replaced by
    another; ``"true"`` returns it, ``"empty"`` the empty caption."""
    from ..shapes.world import CAPTION_PLACE_WORDS, COLOURS, SHAPES

    if what == "true":
        return caption
    if what == "empty":
        return ""
    if what == "place":
        canonical = {w: place for place, words in CAPTION_PLACE_WORDS.items() for w in words}
        words = sorted(canonical, key=len, reverse=True)
        return re.sub("|".join(words), lambda m: _PLACE_SWAP[canonical[m.group(0)]], caption)
    if what == "colour":
        ring = "".join(COLOURS)
        return re.sub(f"([{ring}])色的", lambda m: ring[(ring.index(m.group(1)) + 3) % len(ring)] + "色的", caption)
    if what == "shape":
        return re.sub("|".join(SHAPES), lambda m: SHAPES[(SHAPES.index(m.group(0)) + 1) % len(SHAPES)], caption)
    raise ValueError(f"what must be one of {CAPTION_VARIANTS}, got {what!r}")


def foreground(x0: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """(B, 1, H, W) bool: the pixels of ``x0`` (B, 3, H, W in [-1, 1]) unlike its border colour (the
    mean of its outermost rows and columns) by more than ``threshold`` in some channel: the training
    loss's ``foreground_weight`` mask."""
    x0 = np.asarray(x0, np.float64)
    border = np.concatenate([x0[:, :, 0, :], x0[:, :, -1, :], x0[:, :, :, 0], x0[:, :, :, -1]], axis=2)
    colour = border.mean(axis=2)[:, :, None, None]
    return (np.abs(x0 - colour).max(axis=1, keepdims=True) > threshold)


def caption_probe_rows(eps_fn: Callable[[np.ndarray, int, list], np.ndarray], x0: np.ndarray, captions: list,
                       alphas_cumprod, timesteps: Sequence[int], variants: Sequence[str] = CAPTION_VARIANTS,
                       seed: int = 0) -> list[dict]:
    """How much of the objects' pixels the model takes from the caption, per ``t``.

    For each ``t`` one noise draw makes ``x_t`` from ``x0``; ``eps_fn(x_t, t, captions)`` predicts eps
    with the true captions and with each swapped variant (:func:`swap_caption`). The error is measured
    where the image has objects (:func:`foreground`) and in x0 units: the eps error times
    ``(1 - abar_t) / abar_t`` (the squared error of the implied x0), so every ``t`` reads on one scale.
    A variant's error above the true captions' is what the model read from the swapped words at that
    noise level; equal errors mean the words were not used (the model found the answer in ``x_t``, or
    never learned it)."""
    abar = np.asarray(alphas_cumprod, np.float64)
    x0 = np.asarray(x0, np.float64)
    fg = foreground(x0)
    if not fg.any():
        raise ValueError("the probe images have no foreground pixels (plain images): give images with objects")
    swapped = {v: [swap_caption(c, v) for c in captions] for v in variants}
    rng = np.random.default_rng(seed)
    rows = []
    for t in timesteps:
        t = int(t)
        noise, xt = _noised(x0, abar, t, rng)
        row = {"t": t, "abar": float(abar[t])}
        for v, caps in swapped.items():
            eps = np.asarray(eps_fn(xt, t, caps), np.float64)[:, :3]
            err = np.square(eps - noise) * (1.0 - abar[t]) / abar[t]
            row[v] = float((err * fg).sum() / (fg.sum() * 3))
        rows.append(row)
    return rows


def denoise_probe_rows(eps_fn: Callable[[np.ndarray, int], np.ndarray], x0: np.ndarray, captions: list,
                       alphas_cumprod, timesteps: Sequence[int], seed: int = 0) -> list[dict]:
    """Can the model keep what ``x_t`` still shows? Per ``t``: one noise draw makes ``x_t`` from the
    shapes-world images ``x0`` (B, 3, H, W in [-1, 1]); the model's one-call estimate of the clean image,
    ``x0_hat = clip((x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), -1, 1)``, is read by the world's scorer
    against the images' captions. Rows: ``t``, ``abar``, the rates ``colour``, ``shape``, ``position``
    of the estimates, ``mse`` (x0_hat against x0 over every pixel) and ``mse_objects`` (over
    :func:`foreground`).

    Where the word probe (:func:`word_value_rows`) says that ``x_t`` still shows the shape (its
    posterior near 1), a denoiser that reads ``x_t`` well keeps it; a shape rate well below the
    renders' own there is a model that cannot yet draw the outline it is shown, whatever its text
    side does."""
    from ..diffusion.gaussian import eps_to_x0_ab
    from ..shapes.scorer import score_many
    from ..utils.images import to_uint8

    abar = np.asarray(alphas_cumprod, np.float64)
    x0 = np.asarray(x0, np.float64)
    if x0.ndim != 4 or x0.shape[1] != 3:
        raise ValueError(f"x0 must be (batch, 3, height, width), got shape {x0.shape}")
    if len(captions) != len(x0):
        raise ValueError(f"{len(captions)} captions for {len(x0)} images; they must pair up one to one")
    fg = foreground(x0)
    rng = np.random.default_rng(seed)
    rows = []
    for t in timesteps:
        t = int(t)
        _, xt = _noised(x0, abar, t, rng)
        eps = np.asarray(eps_fn(xt, t), np.float64)[:, :3]
        est = np.clip(eps_to_x0_ab(abar[t], xt, eps), -1.0, 1.0)
        rates = score_many(list(to_uint8(est.astype(np.float32))), list(captions))
        sq = np.square(est - x0)
        rows.append({"t": t, "abar": float(abar[t]), "colour": rates["colour"], "shape": rates["shape"],
                     "position": rates["position"], "mse": float(sq.mean()),
                     "mse_objects": float((sq * fg).sum() / max(1, fg.sum() * 3))})
    return rows


# ------------------------------------------------------------------------- the ideal denoiser's use of a word
def word_alternatives(scene, what: str, image_size: int = 64, antialias: bool = True) -> tuple[np.ndarray, int]:
    """``(X, k)``: the one-object shapes-world ``scene`` rendered with each value of one word, ``what`` =
    ``"shape"`` (the world's four shapes, the object's size, offset and rotation kept; a circle unrotated)
    or ``"place"`` (its five places), everything else equal; ``X`` (K, 3, H, W) on the [-1, 1] scale and
    ``k`` the index of the scene's own value."""
    import dataclasses

    from ..shapes.world import PLACES, SHAPES, render_scene

    if len(scene.objects) != 1:
        raise ValueError("word_alternatives takes one-object scenes")
    obj = scene.objects[0]
    if what == "shape":
        values = [dataclasses.replace(obj, shape=s, rotation=0.0 if s == "圆形" else obj.rotation) for s in SHAPES]
        k = SHAPES.index(obj.shape)
    elif what == "place":
        values = [dataclasses.replace(obj, place=p) for p in PLACES]
        k = list(PLACES).index(obj.place)
    else:
        raise ValueError(f"what must be 'shape' or 'place', got {what!r}")
    renders = [render_scene(dataclasses.replace(scene, objects=(v,)), image_size, antialias) for v in values]
    return np.stack([r.astype(np.float64).transpose(2, 0, 1) / 127.5 - 1.0 for r in renders]), k


def word_value_rows(alternatives: Sequence[tuple[np.ndarray, int]], alphas_cumprod, timesteps: Sequence[int],
                    draws: int = 4, seed: int = 0) -> list[dict]:
    """What one word is worth to the ideal denoiser, per ``t``, when it knows everything else.

    Each item of ``alternatives`` is ``(X, k)``: an image rendered with each of the word's K values,
    everything else equal (:func:`word_alternatives`), ``X[k]`` the true one. For each ``t`` and each of
    ``draws`` noise draws, ``x_t`` comes from ``X[k]``; the posterior over the K renders given ``x_t``
    (Gaussian likelihood ``N(x_t; sqrt(abar) X_j, (1 - abar) I)``, uniform prior) is what a denoiser
    that lacks only the word can know. Rows: ``p_true``, the mean posterior of the true value (1: x_t
    shows it, the word is worth nothing; 1 / K: x_t shows nothing of it), and ``excess``, the squared
    error of that denoiser's posterior-mean x0 against the truth over the pixels where the renders
    differ from their border colour (their union), per pixel and channel: what the word would save."""
    abar = np.asarray(alphas_cumprod, np.float64)
    rng = np.random.default_rng(seed)
    rows = []
    for t in timesteps:
        t = int(t)
        if not 0 <= t < len(abar):
            raise ValueError(f"timestep {t} is outside the {len(abar)}-step chain")
        a = abar[t]
        p_true, excess = [], []
        for x, k in alternatives:
            x = np.asarray(x, np.float64)
            fg = foreground(x).any(0)[0]
            for _ in range(int(draws)):
                xt = np.sqrt(a) * x[k] + np.sqrt(1.0 - a) * rng.standard_normal(x[k].shape)
                logp = -np.square(xt[None] - np.sqrt(a) * x).sum((1, 2, 3)) / (2.0 * (1.0 - a))
                post = np.exp(logp - logp.max())
                post /= post.sum()
                guess = np.tensordot(post, x, 1)
                p_true.append(post[k])
                excess.append(float(np.square(guess - x[k])[:, fg].mean()) if fg.any() else 0.0)
        rows.append({"t": t, "abar": float(a), "p_true": float(np.mean(p_true)), "excess": float(np.mean(excess))})
    return rows

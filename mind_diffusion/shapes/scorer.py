"""Prompt-adherence scorer for the shapes world: read colour, shape and place of every shape in
an image and compare them with what the prompt asks for.

``analyse(image)``
    1. light 3x3 median filter on images >= 48 px (removes single-pixel noise, keeps edges);
    2. background = median Lab colour of the 2-pixel image border;
    3. foreground = pixels whose Lab distance to the background exceeds ``fg_threshold`` (raised
       to 3x the border's median spread on noisy images), opened only on images >= 128 px;
    4. each connected component of at least ``min_area_frac`` of the image is one object:
       - colour: nearest ``COLOURS`` entry (Lab distance) to the median colour of the
         component's interior (its eroded mask, so anti-aliased edges don't count);
       - outline: the component's neighbourhood re-thresholded at half the object's contrast
         (so blurred edges neither grow nor shrink it), smoothed when the image is noisy;
       - shape, from the outer contour: solidity (area / convex-hull area) below
         ``STAR_SOLIDITY`` means a star (stars measure 0.61-0.74, the others >= 0.87), or the new
         shape 十字形 (a cross, never drawn by the world: solidity 0.72-0.86) when its
         area / min-area rectangle reaches ``CROSS_FILL_RECT`` (stars <= 0.55, crosses >= 0.65);
         otherwise the nearest of ``SHAPE_PROTOTYPES`` in the space of (solidity,
         area / enclosing circle, area / min-area rectangle, area / min enclosing triangle),
         whose ideal values are circle (1, 1, 0.79, 0.6), square (1, 0.64, 1, 0.5),
         triangle (1, 0.41, 0.5, 1) (the cross's prototype, for crosses with solidity above
         ``STAR_SOLIDITY``, is its rendered mean); a component nearest the circle or the square whose
         outline has four notches (convexity defects) of depth >= ``CROSS_NOTCH`` x sqrt(area) and no fifth
         deeper than ``CROSS_NOTCH5`` is a cross whose inner corners a decoder rounded (the old
         shapes' notches stay below 0.07, rendered or decoded);
       - arms, from the radius profile r(angle) of the outline around its centroid: the magnitudes
         h3, h4, h5 of its 3rd, 4th and 5th Fourier coefficients over the mean radius (a triangle's
         three corners give h3, a square's four corners and a cross's four arms h4, a star's five points
         h5). A component nearest the circle or the square with h4 >= ``CROSS_H4`` (and h4 above h3 and
         h5) is a cross a decoder rounded so far that its notches are shallow (squares, rendered or
         decoded, stay at or below 0.088); a component read as 十字形 whose profile has more five-fold than
         four-fold shape (h5 > h4) is a star with one point blunted. Rendered and decoded renders of
         the five shapes: see ``tests/test_shapes_new_shape.py``. Circles, squares and triangles
         change reading only where a four-armed profile says cross; stars only from 十字形 back to 星形;
       - place: nearest ``PLACES`` centre to the component's centroid.
``score(image, prompt)``
    parses the prompt (``parse_prompt``), takes as many detections as it names objects (the
    largest), finds the assignment of prompted objects to them that agrees on the most attributes
    (ties: same place, then closest to the place's centre, then larger), and reports per
    attribute whether every prompted object got it right.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import permutations

import numpy as np

from .world import COLOURS, PLACES, ParsedPrompt, parse_prompt

__all__ = ["CROSS_FILL_RECT", "CROSS_H4", "CROSS_NOTCH", "CROSS_NOTCH5", "STAR_SOLIDITY", "DetectedObject", "analyse",
           "score", "score_many"]

STAR_SOLIDITY = 0.8
CROSS_FILL_RECT = 0.6
# A decoded (VAE-smoothed) cross rounds its inner corners: its solidity rises above STAR_SOLIDITY and
# the nearest prototype may be the square (or the circle). Its outline still has four notches
# (convexity defects) of depth >= CROSS_NOTCH x sqrt(area) and no fifth one (0.10-0.16 on decoded
# crosses; circles and squares, rendered or decoded, <= 0.07; stars have five). Only components whose
# nearest prototype is the circle or the square are re-read (a jagged small triangle can show four
# pixel-deep notches).
CROSS_NOTCH = 0.075
CROSS_NOTCH5 = 0.07
# A cross rounded further still (a four-lobed blob, 1 in 10 decoded crosses) keeps its four-fold radius
# profile: h4 (see _radial_harmonics) 0.080-0.151 on 480 decoded crosses, 0.10-0.18 rendered; squares reach
# 0.088 (480 rendered, 480 decoded: the corners; a thin margin, but no square the world's models drew changed
# its reading: 320 images of the shapes LDM, its editing and the built-in GLIDE), circles, triangles and stars
# stay below 0.04.
CROSS_H4 = 0.09
# Mean (solidity, fill_circle, fill_rect, fill_triangle) of rendered 64x64 shapes (3000 each,
# with and without anti-aliasing; the cross: 1280); a non-star component takes the nearest prototype.
SHAPE_PROTOTYPES = {
    "圆形": np.array([0.979, 0.898, 0.808, 0.604]),
    "正方形": np.array([0.941, 0.694, 0.890, 0.539]),
    "三角形": np.array([0.914, 0.491, 0.563, 0.863]),
    "十字形": np.array([0.778, 0.631, 0.709, 0.464]),
}
_PALETTE_NAMES = list(COLOURS)


def _palette_lab() -> np.ndarray:
    import cv2

    arr = np.asarray([COLOURS[c] for c in _PALETTE_NAMES], np.float32).reshape(1, -1, 3) / 255.0
    return cv2.cvtColor(arr, cv2.COLOR_RGB2Lab).reshape(-1, 3)


_PALETTE_LAB = None


@dataclass
class DetectedObject:
    """One detected shape. ``centroid`` is (x, y) in [0, 1] image coordinates (y down);
    ``area`` is the fraction of the image it covers."""

    colour: str
    shape: str
    place: str
    centroid: tuple
    area: float
    colour_distance: float = 0.0  # Lab distance from the median colour to the chosen palette colour
    features: dict[str, float] = field(default_factory=dict)


def _as_rgb_uint8(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = img[..., :3]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got an array of shape {img.shape}")
    if min(img.shape[:2]) < 16:
        raise ValueError(f"image is too small to score ({img.shape[1]}x{img.shape[0]}); need >= 16x16")
    if img.dtype != np.uint8:
        if np.issubdtype(img.dtype, np.floating):
            raise ValueError("expected a uint8 image (0..255); convert float images first "
                             "(e.g. mind_diffusion.utils.images.to_uint8)")
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _notch_depths(contour, hull_idx, area: float) -> list[float]:
    """The five deepest convexity defects of the outline (depth of each notch below the convex
    hull given as contour indices), deepest first, in units of sqrt(area); zeros when there are
    fewer."""
    import cv2

    depths: list[float] = []
    try:
        defects = cv2.convexityDefects(contour, hull_idx)
        if defects is not None:
            depths = sorted((defects[:, 0, 3] / 256.0).tolist(), reverse=True)
    except cv2.error:  # a self-intersecting or degenerate outline: no notches
        depths = []
    scale = float(np.sqrt(max(area, 1e-6)))
    return [d / scale for d in depths[:5]] + [0.0] * max(0, 5 - len(depths))


def _radial_harmonics(contour, n_bins: int = 90) -> dict[str, float]:
    """h3, h4, h5: magnitudes of the 3rd, 4th and 5th Fourier coefficients of the outline's radius
    profile r(angle) around its centroid (the outermost point in each of ``n_bins`` angle bins of the
    outline resampled at 720 even steps; empty bins interpolated), over the mean radius. The number of
    arms or corners shows as the harmonic that stands out; a circle has none."""
    import cv2

    pts = contour[:, 0, :].astype(np.float64)
    m = cv2.moments(contour)
    if len(pts) < 3 or m["m00"] <= 0:
        return {"h3": 0.0, "h4": 0.0, "h5": 0.0}
    cx, cy = m["m10"] / m["m00"], m["m01"] / m["m00"]
    closed = np.vstack([pts, pts[:1]])
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(closed, axis=0).T))])
    u = np.linspace(0.0, arc[-1], 720, endpoint=False)
    x, y = np.interp(u, arc, closed[:, 0]) - cx, np.interp(u, arc, closed[:, 1]) - cy
    bins = ((np.arctan2(y, x) + np.pi) / (2 * np.pi) * n_bins).astype(int) % n_bins
    r = np.full(n_bins, -1.0)
    np.maximum.at(r, bins, np.hypot(x, y))
    filled = np.flatnonzero(r >= 0)
    idx = np.arange(n_bins)
    r = np.interp(idx, filled, r[filled], period=n_bins)
    mean = float(r.mean())   # > 0: an outline of positive area has points off its centroid
    angle = (idx + 0.5) * (2 * np.pi / n_bins)
    return {f"h{k}": float(abs(np.mean(r * np.exp(-1j * k * angle))) / mean) for k in (3, 4, 5)}


def _shape_of(contour, area: float) -> tuple:
    import cv2

    hull_idx = cv2.convexHull(contour, returnPoints=False)   # indices: the notches need them too
    hull_area = max(cv2.contourArea(contour[hull_idx[:, 0]]), 1e-6)
    solidity = area / hull_area
    (_, _), radius = cv2.minEnclosingCircle(contour)
    fill_circle = area / max(np.pi * radius * radius, 1e-6)
    (_, _), (rw, rh), _ = cv2.minAreaRect(contour)
    fill_rect = area / max(rw * rh, 1e-6)
    try:
        tri_area, _ = cv2.minEnclosingTriangle(contour.astype(np.float32))
    except cv2.error:
        tri_area = 0.0
    fill_tri = area / max(tri_area, 1e-6) if tri_area > 0 else 0.0
    notches = _notch_depths(contour, hull_idx, area)
    h = _radial_harmonics(contour)
    feats = {"solidity": float(solidity), "fill_circle": float(fill_circle), "fill_rect": float(fill_rect),
             "fill_triangle": float(fill_tri), "notch4": notches[3], "notch5": notches[4], **h}
    if solidity < STAR_SOLIDITY:
        shape = "十字形" if fill_rect >= CROSS_FILL_RECT else "星形"
    else:
        vec = np.array([solidity, fill_circle, fill_rect, fill_tri])
        dists = {name: float(np.linalg.norm(vec - proto)) for name, proto in SHAPE_PROTOTYPES.items()}
        shape = min(dists, key=dists.get)
        if shape in ("圆形", "正方形") and (
                (notches[3] >= CROSS_NOTCH and notches[4] < CROSS_NOTCH5)   # four notches, not five
                or (h["h4"] >= CROSS_H4 and h["h4"] > max(h["h3"], h["h5"]))):   # four lobes
            shape = "十字形"   # a cross whose inner corners a decoder rounded
    if shape == "十字形" and h["h5"] > h["h4"]:
        shape = "星形"   # five-fold, not four-fold: a star with a blunted point
    return shape, feats


def analyse(image, fg_threshold: float = 14.0, min_area_frac: float = 0.003) -> list[DetectedObject]:
    """Detect the shapes in an RGB uint8 image, largest first."""
    import cv2

    global _PALETTE_LAB
    if _PALETTE_LAB is None:
        _PALETTE_LAB = _palette_lab()
    img = _as_rgb_uint8(image)
    h, w = img.shape[:2]
    lab = cv2.medianBlur(img, 3) if min(h, w) >= 48 else img
    lab = cv2.cvtColor(lab.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    b = 2
    border = np.concatenate([lab[:b].reshape(-1, 3), lab[-b:].reshape(-1, 3),
                             lab[:, :b].reshape(-1, 3), lab[:, -b:].reshape(-1, 3)])
    bg = np.median(border, axis=0)
    dist_bg = np.linalg.norm(lab - bg, axis=-1)
    # Noisy images: raise the threshold above the background's own spread (robust estimate).
    border_d = np.linalg.norm(border - bg, axis=-1)
    spread = float(np.median(border_d))
    thr = max(fg_threshold, 3.0 * spread)
    fg = (dist_bg > thr).astype(np.uint8)
    if min(h, w) >= 128:
        fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, labels, stats, cents = cv2.connectedComponentsWithStats(fg, connectivity=8)
    min_area = max(8.0, min_area_frac * h * w)
    kernel = np.ones((3, 3), np.uint8)
    found = []
    for k in range(1, n):
        if stats[k, cv2.CC_STAT_AREA] < min_area:
            continue
        mask = (labels == k).astype(np.uint8)
        inner = cv2.erode(mask, kernel)
        sel = inner.astype(bool) if inner.sum() >= 4 else mask.astype(bool)
        med = np.median(lab[sel], axis=0)
        d = np.linalg.norm(_PALETTE_LAB - med, axis=-1)
        ci = int(np.argmin(d))
        # Outline at half the object's contrast (blurred edges), near the component only.
        contrast = float(np.linalg.norm(med - bg))
        near = cv2.dilate(mask, kernel, iterations=2).astype(bool)
        outline = (near & (dist_bg > max(thr, 0.5 * contrast))).astype(np.uint8)
        if spread > 2.0:  # noisy: smooth the ragged outline
            outline = (cv2.GaussianBlur(outline.astype(np.float32), (0, 0), 1.0) > 0.5).astype(np.uint8)
        if outline.sum() < 4:
            outline = mask
        contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        contour = max(contours, key=cv2.contourArea)
        area = cv2.contourArea(contour)
        if area < 4:
            continue
        shape, feats = _shape_of(contour, area)
        cx, cy = (cents[k][0] + 0.5) / w, (cents[k][1] + 0.5) / h
        place = min(PLACES, key=lambda p: (PLACES[p][0] - cx) ** 2 + (PLACES[p][1] - cy) ** 2)
        found.append(DetectedObject(_PALETTE_NAMES[ci], shape, place, (float(cx), float(cy)),
                                    float(stats[k, cv2.CC_STAT_AREA]) / (h * w), float(d[ci]), feats))
    found.sort(key=lambda o: -o.area)
    return found


def _match_key(exp, det: DetectedObject):
    colour, shape, place = exp
    ok_c = colour is None or det.colour == colour
    ok_s = det.shape == shape
    ok_p = place is None or det.place == place
    if place is not None:
        tx, ty = PLACES[place]
        dist = (det.centroid[0] - tx) ** 2 + (det.centroid[1] - ty) ** 2
    else:
        dist = 0.0
    return (ok_c + ok_s + ok_p, ok_p, -dist, det.area), (ok_c, ok_s, ok_p)


def score(image, prompt, detections: list[DetectedObject] | None = None) -> dict:
    """Score one image against its prompt (str or ``ParsedPrompt``).

    Returns ``dict(colour, shape, position, count, all, n_expected, n_found, details)``: each
    attribute is True when every prompted object was matched to a detection with that attribute
    (an attribute the prompt leaves open counts as right); ``count`` is n_found == n_expected.
    """
    parsed = prompt if isinstance(prompt, ParsedPrompt) else parse_prompt(prompt)
    dets = analyse(image) if detections is None else detections
    expected = list(parsed.objects)
    # only as many detections as the prompt has objects, largest first: with more candidates, an image
    # of many coloured fragments (a failed sample) would find a fragment that happens to agree
    cands = dets[:len(expected)]
    best, best_key = None, None
    slots = list(range(len(cands))) + [None] * len(expected)
    for perm in dict.fromkeys(permutations(slots, len(expected))):  # dedupe, keep order
        key, flags = [0, 0, 0.0, 0.0], []
        for exp, j in zip(expected, perm):
            if j is None:
                flags.append((False, False, False))
                key[2] -= 10.0  # worse than any real detection
                continue
            k, f = _match_key(exp, cands[j])
            key = [key[0] + k[0], key[1] + k[1], key[2] + k[2], key[3] + k[3]]
            flags.append(f)
        key = tuple(key)
        if best_key is None or key > best_key:
            best, best_key = (perm, flags), key
    perm, flags = best
    details = []
    for exp, j, f in zip(expected, perm, flags):
        det = cands[j] if j is not None else None
        details.append({"expected": exp, "detected": None if det is None else (det.colour, det.shape, det.place),
                        "centroid": None if det is None else det.centroid,
                        "colour": bool(f[0]), "shape": bool(f[1]), "position": bool(f[2])})
    out = {
        "colour": all(d["colour"] for d in details),
        "shape": all(d["shape"] for d in details),
        "position": all(d["position"] for d in details),
        "count": len(dets) == len(expected),
        "n_expected": len(expected),
        "n_found": len(dets),
        "details": details,
    }
    out["all"] = out["colour"] and out["shape"] and out["position"]
    return out


def score_many(images: Sequence, prompts: Sequence, return_results: bool = False) -> dict:
    """Rates over many (image, prompt) pairs: colour, shape, position, all (every attribute of
    every object right), count (right number of shapes) and object-level rates."""
    images, prompts = list(images), list(prompts)
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts; they must pair up one to one")
    if not images:
        raise ValueError("no images to score")
    results = [score(im, p) for im, p in zip(images, prompts)]
    n = len(results)
    summary = {k: sum(r[k] for r in results) / n for k in ("colour", "shape", "position", "all", "count")}
    objs = [d for r in results for d in r["details"]]
    for k in ("colour", "shape", "position"):
        summary[f"object_{k}"] = sum(d[k] for d in objs) / len(objs)
    summary["n"] = n
    summary["n_objects"] = len(objs)
    if return_results:
        summary["results"] = results
    return summary

"""The one result type of every pipeline (DDPM, GLIDE, latent diffusion)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, List, Optional

import numpy as np

__all__ = ["DiffusionOutput"]


class DiffusionOutput(Mapping):
    """Images of every stage a pipeline ran, keyed by the stage's nominal pixel size, in the
    order they were made (GLIDE: 64, 256, 1024; DDPM and LDM: one stage), plus what made them.

    * ``out.images``: the last stage's images, ``(N, H, W, 3)`` uint8 (or ``(N, 3, H, W)``
      float in [-1, 1] for ``output_type="np"``, latents for ``"latent"``);
    * ``out[size]``: one stage's images; ``list(out)``: the stage sizes;
    * ``out.prompts[i]`` and ``out.seeds[i]``: image ``i``'s prompt (or class label) and the
      seed that regenerates it alone (``num_images_per_prompt=1``);
    * ``out.settings``: every resolved setting (sampler, steps, scale, size, …).
    """

    def __init__(self, stages: Dict[int, np.ndarray], *, prompts: List, seeds: List[int],
                 settings: Optional[dict] = None):
        if not stages:
            raise ValueError("a DiffusionOutput needs at least one stage of images")
        self._stages = dict(stages)
        self.prompts = list(prompts)
        self.seeds = [int(s) for s in seeds]
        self.settings = dict(settings or {})

    @property
    def images(self) -> np.ndarray:
        return self._stages[next(reversed(self._stages))]

    def __getitem__(self, size: int) -> np.ndarray:
        try:
            return self._stages[size]
        except KeyError:
            raise KeyError(f"no stage {size!r} in this output; stages: {list(self._stages)} "
                           f"(use .images for the final images)") from None

    def __iter__(self):
        return iter(self._stages)

    def __len__(self) -> int:
        return len(self._stages)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}: {tuple(v.shape)}" for k, v in self._stages.items())
        return f"DiffusionOutput({{{shapes}}}, {len(self.seeds)} image(s))"

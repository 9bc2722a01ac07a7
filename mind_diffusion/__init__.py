"""Mind-Diffusion: MindSpore text-to-image diffusion (DDPM, GLIDE, Wukong-Huahua)."""
from . import _env  # noqa: F401  (must run before mindspore is imported anywhere)

__version__ = "0.1.0"

"""The checkpoints the web page offers, found under ``models/`` (no MindSpore, no gradio).

* latent diffusion (the Text to image tab): the official ``wukong-huahua-ms.ckpt`` (with
  ``configs/wukong/v1-inference-chinese.yaml``), converted Stable Diffusion files
  ``sd*.ckpt`` (with ``configs/sd/v1-inference.yaml``; ``scripts/convert_sd_to_ms.py`` writes
  them there), any other ``*.ckpt`` directly in ``models/`` (a Wukong fine-tune, with the Wukong
  config), and every model folder whose ``config.yaml`` declares a latent-diffusion
  ``model.family`` (the built-in ``models/shapes_zh``);
* GLIDE: ``models/glide/`` holding ``glide_gen.ckpt`` and ``cog-pretrain.model`` (the super-
  resolution and SRGAN files add the 256 and 1024 px stages), and every model folder whose
  ``config.yaml`` declares a GLIDE ``model.family`` with the files it names (the built-in
  shapes-world GLIDE ``models/glide_shapes``, selectable with or without the official files);
* LoRA files: ``models/lora/*`` (:func:`find_loras`), added to a latent-diffusion model;
* DDPM: every model folder whose ``config.yaml`` has no ``model.family`` (``models/ddpm_digits16``),
  its class names from ``classes.txt`` when there is one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

WUKONG_CONFIG = "configs/wukong/v1-inference-chinese.yaml"
SD_CONFIG = "configs/sd/v1-inference.yaml"
GLIDE_CONFIG = "configs/glide/infer.yaml"
GLIDE_FILES = {64: "glide_gen.ckpt", 256: "glide_super_res.ckpt", 1024: "srgan.ckpt"}
GLIDE_TOKENIZER = "cog-pretrain.model"
LORA_DIR = "lora"
LORA_SUFFIXES = (".ckpt", ".safetensors", ".bin", ".pt", ".pth")  # those mind_diffusion.ldm.lora reads


@dataclass(frozen=True)
class ModelEntry:
    """One model on the page: ``kind`` (ldm | glide | ddpm), the name shown, its config YAML and
    its checkpoint (GLIDE: the folder of its files)."""
    kind: str
    label: str
    config: Path
    ckpt: Path
    stages: tuple = ()  # GLIDE: the stages whose checkpoints are there
    classes: tuple = field(default=())  # DDPM: class names, index = label

    @property
    def key(self) -> tuple:
        return (self.kind, str(self.ckpt), str(self.config))


def _family(config: Path) -> Optional[str]:
    from ..config import read_yaml

    try:
        model = read_yaml(config).get("model", None)
    except Exception:  # an unreadable folder config is not offered (the scripts say why)
        return "?"
    fam = model.get("family", None) if hasattr(model, "get") else None
    return None if fam is None else str(fam)


def read_classes(folder: Path, num_classes: Optional[int]) -> tuple:
    """Class names of a DDPM folder: ``classes.txt`` (one a line) or the ids."""
    f = folder / "classes.txt"
    names = [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()] \
        if f.is_file() else []
    n = int(num_classes or 0)
    if n and len(names) != n:
        names = [str(i) for i in range(n)]
    return tuple(names)


def find_loras(models_dir: str | Path) -> List[Path]:
    """The LoRA files in ``models/lora/`` (ours, the original's MindPet ``.ckpt``, kohya / A1111
    and diffusers files), for the Text to image tab."""
    d = Path(models_dir) / LORA_DIR
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in LORA_SUFFIXES) \
        if d.is_dir() else []


def glide_folder_entry(folder: Path, cfg: Path, family: str) -> Optional[ModelEntry]:
    """A GLIDE model folder (its config names the files, in the folder): offered with the stages
    whose files are all there, when the base stage's are."""
    from ..config import load_config
    from ..glide.builtin import BUILTIN_FAMILY, glide_files, missing_files
    from ..glide.config import glide_config_defaults

    try:
        conf = load_config(cfg, (), glide_config_defaults())
    except Exception:  # an unreadable folder config is not offered (the scripts say why)
        return None
    chinese = bool(conf.tokenizer.is_chinese)
    stages = tuple(s for s in (64, 256, 1024) if not missing_files(glide_files(conf, folder, s), chinese))
    if not stages:
        return None
    what = "built-in shapes-world GLIDE" if family == BUILTIN_FAMILY else family
    return ModelEntry("glide", f"{folder.name} ({what})", cfg, folder, stages=stages)


def find_models(models_dir: str | Path, root: str | Path) -> Dict[str, List[ModelEntry]]:
    """{"ldm": [...], "glide": [...], "ddpm": [...]} of what is in ``models_dir``; the config
    paths of the official files are under ``root`` (the repository)."""
    models_dir, root = Path(models_dir), Path(root)
    found: Dict[str, List[ModelEntry]] = {"ldm": [], "glide": [], "ddpm": []}
    if not models_dir.is_dir():
        return found
    for f in sorted(models_dir.glob("*.ckpt")):
        if f.name == "wukong-huahua-ms.ckpt":
            found["ldm"].insert(0, ModelEntry("ldm", f"{f.name} (Wukong-Huahua)", root / WUKONG_CONFIG, f))
        elif f.name.lower().startswith("sd"):
            found["ldm"].append(ModelEntry("ldm", f"{f.name} (Stable Diffusion v1.x)", root / SD_CONFIG, f))
        else:
            found["ldm"].append(ModelEntry("ldm", f"{f.name} (Wukong config)", root / WUKONG_CONFIG, f))
    glide = models_dir / "glide"
    if (glide / GLIDE_FILES[64]).is_file() and (glide / GLIDE_TOKENIZER).is_file():
        stages = tuple(s for s in (64, 256, 1024)
                       if all((glide / GLIDE_FILES[k]).is_file() for k in GLIDE_FILES if k <= s))
        found["glide"].append(ModelEntry("glide", "glide (Taichu-GLIDE)",
                                         root / GLIDE_CONFIG, glide, stages=stages))
    for folder in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        cfg = folder / "config.yaml"
        if folder.name == LORA_DIR or not cfg.is_file():
            continue
        fam = _family(cfg)
        if fam is not None and "glide" in fam:
            entry = glide_folder_entry(folder, cfg, fam)
            if entry is not None:
                found["glide"].append(entry)
            continue
        if fam == "?":
            continue
        if fam is not None:
            from ..config import read_yaml

            name = str(read_yaml(cfg).get("checkpoint", {}).get("name", "model.ckpt"))
            if (folder / name).is_file():
                found["ldm"].append(ModelEntry("ldm", f"{folder.name} ({fam})", cfg, folder / name))
            continue
        ckpt = next((folder / n for n in ("model_ema.ckpt", "model.ckpt") if (folder / n).is_file()), None)
        if ckpt is not None:
            from ..config import read_yaml

            n = read_yaml(cfg).get("model", {}).get("num_classes", None)
            found["ddpm"].append(ModelEntry("ddpm", folder.name, cfg, ckpt,
                                            classes=read_classes(folder, n)))
    return found

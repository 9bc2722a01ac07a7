"""Which GLIDE files a run uses: the official Taichu-GLIDE files, else the built-in shapes-world
GLIDE (no MindSpore here).

The built-in lives in ``models/glide_shapes/`` (the environment variable ``GLIDE_BUILTIN``
names another folder): ``config.yaml`` (an inference config of the schema
``glide_config_defaults()``: its networks, tokenizer and sampling defaults), the checkpoints it
names (``glide_gen.ckpt``, ``glide_super_res.ckpt``, ``srgan.ckpt``, in the released layout) and
its SentencePiece model (``shapes-sp.model``). It knows only the shapes world.

:func:`load_glide_source` decides, before any checkpoint is read:

* the official files of the requested stages (and the tokenizer) are in the checkpoint folder
  (``--ckpt_path``, else the config's ``checkpoint.ckpt_path``, ``models/glide``): they are used;
* they are missing, the user named no file or folder (no ``--config``, ``--ckpt_path``,
  ``--gen_ckpt`` ..., ``--set checkpoint.*`` / ``tokenizer.*``) and the built-in is complete for
  those stages: the built-in is used, with its own config, and :attr:`GlideSource.notice` is the
  one line that says so;
* they are missing and the built-in is not complete: one error naming the download URL and what
  the built-in folder lacks;
* the user named a folder or a file: no fallback; its missing files are reported by
  :meth:`GlideSource.checked_files` with the usual "not found" errors.

``official_overrides`` (``--official_set``) are config overrides for a Taichu-GLIDE config only
(``model.family: taichu-glide``): ``scripts/run_glide_infer.sh`` passes the original
``run_infer.sh`` settings that way, so they never override the built-in's own sampling defaults;
``overrides`` (``--set``) and explicit flags apply to either.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from ..config import load_config, read_yaml
from .config import GLIDE_URL, glide_config_defaults

__all__ = ["BUILTIN_ENV", "BUILTIN_DIR", "BUILTIN_FAMILY", "OFFICIAL_CONFIG", "OFFICIAL_FAMILY", "FILE_KEYS",
           "STAGE_FILES", "GlideSource", "builtin_dir", "builtin_source", "check_checkpoint", "display_path", "glide_files",
           "load_glide_source", "missing_files", "resolve_ckpt_dir", "resolve_config_path"]

ROOT = Path(__file__).resolve().parents[2]
BUILTIN_ENV = "GLIDE_BUILTIN"
BUILTIN_DIR = "models/glide_shapes"
BUILTIN_CONFIG = "config.yaml"
BUILTIN_FAMILY = "glide-shapes"
OFFICIAL_CONFIG = "configs/glide/infer.yaml"
OFFICIAL_FAMILY = "taichu-glide"
#: per stage: the file's key (``checkpoint.<key>`` in the config, ``--<key>`` on the command
#: line), its official name and what it is
STAGE_FILES = {64: ("gen_ckpt", "glide_gen.ckpt", "base model"),
               256: ("super_ckpt", "glide_super_res.ckpt", "super-resolution model"),
               1024: ("srgan_ckpt", "srgan.ckpt", "SRGAN x4 model")}
STAGE_KEYS = {stage: key for stage, (key, _, _) in STAGE_FILES.items()}
FILE_KEYS = (*STAGE_KEYS.values(), "tokenizer_model")


def builtin_dir() -> Path:
    """The built-in GLIDE's folder: ``$GLIDE_BUILTIN``, else ``<repository>/models/glide_shapes``."""
    env = os.environ.get(BUILTIN_ENV, "").strip()
    return Path(env).expanduser() if env else ROOT / BUILTIN_DIR


def display_path(path) -> str:
    """``path`` relative to the working directory when under it, else as given."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def resolve_config_path(path) -> Path:
    """A config path as given (relative to the working directory), else in the repository."""
    p = Path(str(path)).expanduser()
    if p.is_absolute() or p.is_file() or not (ROOT / p).is_file():
        return p
    return ROOT / p


def resolve_ckpt_dir(value, config_path=None) -> Path:
    """``checkpoint.ckpt_path``: absolute as is; a relative one is looked up in the working
    directory, then the config's folder, then the repository (the first that exists; else the
    repository's)."""
    p = Path(str(value)).expanduser()
    if p.is_absolute():
        return p
    bases = [Path.cwd()] + ([Path(config_path).parent] if config_path is not None else []) + [ROOT]
    for base in bases:
        if (base / p).is_dir():
            return base / p
    return ROOT / p


def glide_files(cfg, folder, stages: int, names: Mapping | None = None, is_chinese: bool | None = None) -> dict:
    """{"tokenizer": Path, 64: Path, [256: Path, [1024: Path]]}: the files a run up to ``stages``
    reads. ``names``: {key of :data:`FILE_KEYS`: a file name or path} overriding the config's
    (relative names are in ``folder``)."""
    names = dict(names or {})
    folder = Path(folder)
    chinese = bool(cfg.tokenizer.is_chinese) if is_chinese is None else bool(is_chinese)

    def place(key, default):
        value = names.get(key)
        return (folder / str(default if value is None else value)).expanduser()

    out = {"tokenizer": place("tokenizer_model", cfg.tokenizer.sp_model if chinese else cfg.tokenizer.bpe_dir)}
    for stage, key in STAGE_KEYS.items():
        if stage <= int(stages):
            out[stage] = place(key, cfg.checkpoint[key])
    return out


def missing_files(files: Mapping, is_chinese: bool = True) -> list[str]:
    """Names of the files of ``files`` (from :func:`glide_files`) that are not there (the English
    tokenizer is a folder)."""
    return [Path(p).name for k, p in files.items()
            if not (Path(p).is_dir() if k == "tokenizer" and not is_chinese else Path(p).is_file())]


def check_checkpoint(path, stage: int) -> Path:
    """``path`` when it is a file, else the one-line "<what> checkpoint not found" error."""
    from ..checkpoint.io import CheckpointError

    key, name, what = STAGE_FILES[stage]
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{what} checkpoint not found: {p}. Put {name} there "
                              f"(download: {GLIDE_URL}) or pass --ckpt_path / --{key}; it is "
                              f"needed for --stages {stage} and above")
    return p


@dataclass
class GlideSource:
    """The config and files a GLIDE run uses. ``builtin``: the built-in shapes-world GLIDE;
    ``notice``: the one line saying the built-in stands in for the official files (or "")."""

    cfg: object
    config_path: Path | None
    folder: Path
    stages: int
    names: dict = field(default_factory=dict)
    is_chinese: bool = True
    builtin: bool = False
    notice: str = ""

    @property
    def files(self) -> dict:
        return glide_files(self.cfg, self.folder, self.stages, self.names, self.is_chinese)

    def checked_files(self, stages: int | None = None) -> tuple[Path, dict]:
        """(tokenizer path, {stage: checkpoint path}) for the stages up to ``stages``, each checked:
        a missing one raises the usual one-line "not found" error."""
        files = glide_files(self.cfg, self.folder, self.stages if stages is None else stages, self.names,
                            self.is_chinese)
        tok = files.pop("tokenizer")
        if self.is_chinese and not tok.is_file():
            raise FileNotFoundError(
                f"tokenizer model not found: {tok}. Put cog-pretrain.model (it ships with the "
                f"Taichu-GLIDE checkpoints, {self.cfg.checkpoint.url}) into {self.folder} or pass "
                f"--tokenizer_model PATH")
        return tok, {stage: check_checkpoint(p, stage) for stage, p in files.items()}


def _stages(cfg, stages) -> int:
    return int(cfg.sampling.stages if stages is None else stages)


def builtin_source(stages=None, overrides: Sequence[str] = ()) -> tuple[GlideSource | None, list[str]]:
    """(the built-in's source, []) when its folder holds its config and the files up to
    ``stages`` (default: its config's), else (None, [what is missing])."""
    folder = builtin_dir()
    cfg_path = folder / BUILTIN_CONFIG
    if not cfg_path.is_file():
        return None, [BUILTIN_CONFIG]
    cfg = load_config(cfg_path, overrides, glide_config_defaults())
    src = GlideSource(cfg, cfg_path, folder, _stages(cfg, stages), is_chinese=bool(cfg.tokenizer.is_chinese),
                      builtin=True)
    missing = missing_files(src.files, src.is_chinese)
    return (None, missing) if missing else (src, [])


def load_glide_source(config=None, overrides: Sequence[str] = (), *, ckpt_path=None, stages=None,
                      names: Mapping | None = None, is_chinese: bool | None = None,
                      official_overrides: Sequence[str] = ()) -> GlideSource:
    """The config and files of a GLIDE run (see the module docstring). ``config``: a YAML path or
    None (``configs/glide/infer.yaml``, fallback allowed); ``ckpt_path`` / ``names`` /
    ``is_chinese``: the command line's values, None where not given."""
    names = {k: v for k, v in dict(names or {}).items() if v is not None}
    # a folder or file the user named (also through --set checkpoint.* / tokenizer.*) is never replaced
    named = [str(o).split("=", 1)[0].strip() for o in overrides]
    explicit = config is not None or ckpt_path is not None or bool(names) or is_chinese is False \
        or any(k.startswith(("checkpoint.", "tokenizer.")) for k in named)
    cfg_path = resolve_config_path(OFFICIAL_CONFIG if config is None else config)
    model = read_yaml(cfg_path).get("model", None)  # a malformed one: load_config's error below
    family = model.get("family", OFFICIAL_FAMILY) if hasattr(model, "get") else OFFICIAL_FAMILY
    layers = [*official_overrides, *overrides] if str(family) == OFFICIAL_FAMILY else list(overrides)
    cfg = load_config(cfg_path, layers, glide_config_defaults())
    folder = Path(str(ckpt_path)).expanduser() if ckpt_path is not None \
        else resolve_ckpt_dir(cfg.checkpoint.ckpt_path, cfg_path)
    chinese = bool(cfg.tokenizer.is_chinese) if is_chinese is None else bool(is_chinese)
    src = GlideSource(cfg, cfg_path, folder, _stages(cfg, stages), names, chinese)
    missing = missing_files(src.files, chinese)
    if not missing or explicit:
        return src
    builtin, lacks = builtin_source(stages, overrides)
    where = display_path(folder)
    if builtin is not None:
        builtin.notice = (f"official Taichu-GLIDE checkpoints not found in {where} ({', '.join(missing)}); "
                          f"using the built-in shapes-world GLIDE ({display_path(builtin.folder)}): it knows "
                          f"only the shapes world")
        return builtin
    from ..checkpoint.io import CheckpointError

    raise CheckpointError(
        f"GLIDE checkpoint not found: {where} lacks {', '.join(missing)}; download the Taichu-GLIDE files from "
        f"{GLIDE_URL} into {where} (or pass --ckpt_path FOLDER); the built-in shapes-world GLIDE is not "
        f"available either ({display_path(builtin_dir())} lacks {', '.join(lacks)}; it is set with "
        f"{BUILTIN_ENV}=FOLDER)")

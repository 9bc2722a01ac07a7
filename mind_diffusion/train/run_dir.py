"""Run folders: who owns ``train.output_dir``, and how its checkpoints are found and pruned.

Every trainer goes through here, so the rules hold for DDPM, LDM and VAE training alike:

- a run starts in a folder that holds another run's files (checkpoints, exported models, its
  ``metrics.csv`` / ``config.yaml``) only with ``--resume`` (continue it) or ``--overwrite``
  (those files are listed, then removed; files the trainers do not write are left alone);
  otherwise :class:`RunFolderError` (one line naming the folder and both ways out, exit 2);
- stale temp files of an interrupted atomic write (``*.tmp``, ``*.tmp.tmp``, ``*.tmp.ckpt``) are
  swept when a run starts;
- ``--resume auto`` walks back from the newest checkpoint to the newest one that reads (a
  truncated newest file: one warning line, then the previous good one);
- keep-last-N orders checkpoints by their step number and never deletes the one ``latest.txt``
  names.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

CKPT_DIR = "checkpoints"
LATEST = "latest.txt"
# files a trainer writes at the top of its run folder (exports named by the trainer are added)
RUN_FILES = ("config.yaml", "metrics.csv", "model.ckpt", "model_ema.ckpt", "classes.txt", "model.yaml")
_STEP_RE = re.compile(r"^step_(\d+)\.ckpt$")
_TMP_SUFFIXES = (".tmp", ".tmp.tmp", ".tmp.ckpt")


class RunFolderError(ValueError):
    """The run folder cannot be used as asked; the message names it and the ways out."""


def _say(msg: str):
    print(f"[mind_diffusion] {msg}", flush=True)


def checkpoint_steps(ckpt_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``step_*.ckpt`` in ``ckpt_dir``, ordered by step."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _STEP_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_name(ckpt_dir: str | Path) -> str | None:
    f = Path(ckpt_dir) / LATEST
    try:
        name = f.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return name or None


def temp_files(out_dir: str | Path) -> list[Path]:
    """Leftovers of interrupted atomic writes in the run folder and its checkpoints folder."""
    found = []
    for d in (Path(out_dir), Path(out_dir) / CKPT_DIR):
        if d.is_dir():
            found += [p for p in d.iterdir() if p.is_file() and p.name.endswith(_TMP_SUFFIXES)]
    return sorted(found)


def sweep_temp_files(out_dir: str | Path) -> list[Path]:
    stale = temp_files(out_dir)
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        _say(f"removed {len(stale)} stale temp file(s) of an interrupted write in {out_dir}: "
             + ", ".join(p.name for p in stale[:5]) + (" ..." if len(stale) > 5 else ""))
    return stale


def run_files(out_dir: str | Path, extra_names=()) -> list[Path]:
    """The files of a training run in ``out_dir`` (what ``--overwrite`` removes)."""
    out = Path(out_dir)
    if not out.is_dir():
        return []
    files = [p for _, p in checkpoint_steps(out / CKPT_DIR)]
    if (out / CKPT_DIR / LATEST).is_file():
        files.append(out / CKPT_DIR / LATEST)
    names = dict.fromkeys([*RUN_FILES, *extra_names])
    files += [out / n for n in names if (out / n).is_file()]
    return files


def describe(out_dir: str | Path, files: list[Path]) -> str:
    steps = [s for s, _ in checkpoint_steps(Path(out_dir) / CKPT_DIR)]
    what = f"checkpoints up to step {steps[-1]}" if steps else "no checkpoint"
    names = sorted({p.name for p in files if p.parent == Path(out_dir)})
    return f"{what}" + (f"; {', '.join(names)}" if names else "")


def check_run_dir(out_dir: str | Path, resume=None, overwrite: bool = False, extra_names=(),
                  rank: int = 0) -> list[Path]:
    """Refuse to start a fresh run over another run's files unless ``overwrite``; returns the files
    that ``overwrite`` will remove (nothing is removed here: see :func:`clear_run_dir`). Only rank 0
    looks at the folder (the others would see the files rank 0 is writing)."""
    out = Path(out_dir).expanduser()
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite exclude each other: --resume continues the run in "
                             f"{out}, --overwrite deletes it and starts over; pass one")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"output path {out} exists and is not a folder: choose another train.output_dir")
    if resume or rank != 0:
        return []
    files = run_files(out, extra_names)
    if files and not overwrite:
        raise RunFolderError(f"{out} holds another run ({describe(out, files)}): continue it with --resume auto, "
                             f"start over with --overwrite (deletes that run's checkpoints, log and models), or "
                             f"choose another train.output_dir")
    return files


def clear_run_dir(out_dir: str | Path, files: list[Path]):
    """Remove a previous run's files (as listed by :func:`check_run_dir`), saying what goes."""
    if not files:
        return
    out = Path(out_dir)
    _say(f"--overwrite: removing the earlier run in {out} ({describe(out, files)}): "
         + ", ".join(str(p.relative_to(out)) for p in files))
    for p in files:
        p.unlink(missing_ok=True)
    ck = out / CKPT_DIR
    if ck.is_dir() and not any(ck.iterdir()):
        ck.rmdir()


def resume_candidates(ckpt_dir: str | Path) -> list[Path]:
    """Checkpoints to try for ``--resume auto``, best first: the one ``latest.txt`` names, then
    every ``step_*.ckpt`` from the highest step down."""
    d = Path(ckpt_dir)
    order = []
    name = latest_name(d)
    if name and (d / name).is_file():
        order.append(d / name)
    for _, p in reversed(checkpoint_steps(d)):
        if p not in order:
            order.append(p)
    return order


def prune_checkpoints(ckpt_dir: str | Path, keep: int):
    """Keep the ``keep`` checkpoints of highest step (0 = keep all) and always the one
    ``latest.txt`` names."""
    if keep <= 0:
        return
    d = Path(ckpt_dir)
    protected = latest_name(d)
    ckpts = checkpoint_steps(d)
    for _, p in ckpts[:-keep]:
        if p.name != protected:
            p.unlink(missing_ok=True)


def trim_metrics(log_path: str | Path, step: int) -> int:
    """Drop the rows of a ``metrics.csv`` (first column: step) past ``step``, the step a resumed
    run restarts from: they belong to a segment that ran beyond the resumed checkpoint and was
    lost (killed between checkpoints), and would otherwise appear twice in the log and its
    curve. Returns how many rows went."""
    log_path = Path(log_path)
    lines = log_path.read_text().splitlines(keepends=True)
    keep = lines[:1] + [ln for ln in lines[1:] if not ln.split(",", 1)[0].isdigit()
                        or int(ln.split(",", 1)[0]) <= step]
    if len(keep) < len(lines):
        tmp = log_path.with_name(log_path.name + ".tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, log_path)
        _say(f"{log_path}: dropped {len(lines) - len(keep)} row(s) past step {step}, "
             f"logged after the checkpoint this run resumes from")
    return len(lines) - len(keep)


def read_resume_checkpoint(resume, out_dir: str | Path, what: str = "training checkpoint",
                           rank: int = 0) -> tuple[Path, dict]:
    """(path, {name: array}) of the checkpoint ``--resume`` names: ``'auto'`` walks back from the
    newest checkpoint of ``out_dir/checkpoints`` to the newest one that reads (one warning line per
    bad file, on rank 0); anything else is a path."""
    from ..checkpoint.io import CheckpointError, read_checkpoint

    if str(resume) != "auto":
        return Path(resume), read_checkpoint(resume, what)
    ckpt_dir = Path(out_dir) / CKPT_DIR
    candidates = resume_candidates(ckpt_dir)
    if not candidates:
        raise CheckpointError(f"--resume auto: no checkpoint in {ckpt_dir} yet "
                              f"(start without --resume, or pass a .ckpt path)")
    for i, cand in enumerate(candidates):
        try:
            return cand, read_checkpoint(cand, what)
        except CheckpointError as exc:
            if i == len(candidates) - 1:
                raise CheckpointError(f"--resume auto: no checkpoint in {cand.parent} reads (the "
                                      f"oldest: {exc}); start over with --overwrite") from None
            if rank == 0:
                _say(f"warning: {exc}; trying the previous checkpoint")
    raise AssertionError("unreachable")


def mark_latest(ckpt_dir: str | Path, name: str, keep: int):
    """Point ``latest.txt`` at the checkpoint ``name`` just written (atomically), then keep the
    ``keep`` newest checkpoints (:func:`prune_checkpoints`)."""
    d = Path(ckpt_dir)
    tmp = d / ".latest.txt.tmp"
    tmp.write_text(name + "\n")
    os.replace(tmp, d / LATEST)
    prune_checkpoints(d, keep)

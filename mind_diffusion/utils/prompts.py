"""Prompts files: UTF-8 text, one prompt per line (blank lines skipped, a BOM tolerated)."""
from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Callable, Sequence


def prompt_list(prompt: str | Sequence[str], check: Callable[[str], str]) -> list[str]:
    """A pipeline's ``prompt`` argument as a non-empty list (one str, or a sequence of them),
    each passed through ``check`` (the family's prompt check)."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("nothing to generate: pass a prompt")
    for p in prompts:
        check(p)
    return prompts


def read_prompts_file(path: str | Path, how_to_pass: str) -> list[str]:
    """The non-blank, stripped lines of ``path``; clear errors for a missing file, a folder,
    non-UTF-8 text or a file without prompts. ``how_to_pass`` tells the user which option
    names the file (e.g. "--prompts_file PATH")."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"prompts file not found: {p} (one prompt per line; {how_to_pass})") from None
    except IsADirectoryError:
        raise ValueError(f"prompts file {p} is a folder ({how_to_pass})") from None
    except UnicodeDecodeError:
        raise ValueError(f"prompts file {p} is not UTF-8 text (save it as UTF-8)") from None
    except OSError as exc:
        raise ValueError(f"cannot read prompts file {p}: {exc.strerror}") from None
    prompts = [line.strip() for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompts file {p} has no prompts (one prompt per line)")
    return prompts


_UNSAFE = re.compile(r"[^\w\-]+", re.UNICODE)


def slug(prompt: str, limit: int = 40) -> str:
    """A file-name-safe version of the prompt: letters, digits (any script), '_' and '-'."""
    text = unicodedata.normalize("NFC", prompt)
    s = _UNSAFE.sub("_", text).strip("_-.")[:limit].strip("_-.")
    return s or "prompt"

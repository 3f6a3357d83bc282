"""Atomic file writes: results and configs never exist half-written (a killed run leaves the previous file or none).

Everything goes through :func:`atomic_path`: the data go to a temporary file in the target's folder (same file
system), then ``os.replace``-d onto the target; on any error the temporary file is removed and the target is
untouched. Checkpoints (:func:`save_checkpoint`), text and JSON, figures and data caches all use it.
"""
from __future__ import annotations

import contextlib
import json
import os
import uuid


@contextlib.contextmanager
def atomic_path(path: str):
    """Yield a temporary path next to ``path`` (same folder, so the final rename is atomic; a unique name, and the
    same extension, which writers such as matplotlib and numpy read); when the block finishes it is moved onto
    ``path``; on any error (a kill included: the name never becomes ``path``) it is removed and ``path`` is
    untouched. The one atomic writer: every other write in mclcore goes through it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    root, ext = os.path.splitext(os.path.basename(path))
    tmp = os.path.join(folder, f".{root}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically (creating the folder if needed)."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def write_json_atomic(obj, path: str, *, indent: int = 2, sort_keys: bool = True) -> None:
    """Write ``obj`` as JSON (plus a final newline) to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def _atomic(path: str, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def save_checkpoint(path: str, state: dict) -> None:
    """``torch.save(state)`` to ``path`` atomically: a kill mid-write leaves the previous checkpoint intact."""
    import torch

    def write(tmp):
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())

    _atomic(path, write)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a checkpoint); the message names the file."""


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """A checkpoint written by :func:`save_checkpoint`; an unreadable file raises :class:`CheckpointError`."""
    import torch

    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - pickle/zip errors of a damaged file take many forms
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err}); delete it to "
                              f"start the run over") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(state).__name__}, expected a dict)")
    return state


def save_figure(fig, path: str, **kwargs) -> str:
    """``fig.savefig(path)`` atomically, then close ``fig`` (also when saving fails: pyplot keeps every open figure
    alive); returns ``path``."""
    import matplotlib.pyplot as plt

    try:
        _atomic(path, lambda tmp: fig.savefig(tmp, **kwargs))
    finally:
        plt.close(fig)
    return path

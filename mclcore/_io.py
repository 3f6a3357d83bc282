"""Atomic file writes: results and configs never exist half-written (a killed run leaves the previous file or none).

Everything goes through :func:`atomic_path`: the data go to a temporary file in the target's folder (same file
system), then ``os.replace``-d onto the target; on any error the temporary file is removed and the target is
untouched. Checkpoints (:func:`save_checkpoint`), text and JSON, figures and data caches all use it. Long
measurements made of independent cells (the fresh-critic probes) resume after a kill with :func:`resumable_cells`.
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


def partial_path(path: str) -> str:
    """Where :func:`resumable_cells` keeps the finished cells of the result file ``path``: ``a/b.json`` ->
    ``a/b.partial.json``."""
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext}"


def file_digest(path: str) -> str:
    """SHA-256 of a file's bytes (hex): names the checkpoint a resumable measurement read, so a retrained run never
    resumes another run's cells."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resumable_cells(path: str | None, key: dict, names, compute, log=None) -> dict:
    """``{name: compute(name)}`` for ``names`` in order, resumable: after each cell the finished cells are written
    (atomically) to :func:`partial_path` of the result file ``path``, with ``key`` (JSON-able: what the cells were
    computed from, e.g. the checkpoint's :func:`file_digest` and the sample counts). Started again after a kill with
    the same ``key``, it computes only the cells not yet there; a partial file with another key (or unreadable) is
    started over, never reused. The cells must not depend on each other (each seeds its own draws), so a resumed run
    gives the uninterrupted run's cells. ``log`` (default: stderr) gets one line when cells are reused or dropped.
    The caller writes ``path`` and then calls :func:`remove_partial`. ``path=None``: a plain loop, nothing written."""
    import sys

    if path is None:
        return {name: compute(name) for name in names}
    part = partial_path(path)
    key = json.loads(json.dumps(key))                   # as it reads back (tuples -> lists)
    say = log or (lambda line: print(line, file=sys.stderr, flush=True))
    cells = {}
    if os.path.isfile(part):
        try:
            with open(part) as f:
                saved = json.load(f)
        except (OSError, ValueError):
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key and isinstance(saved.get("cells"), dict):
            cells = saved["cells"]
            say(f"{part}: resuming, {len(cells)} finished cell(s) reused: {', '.join(cells)}")
        else:
            say(f"{part}: computed from something else (or unreadable); starting over")
    out = {}
    for name in names:
        if name not in cells:
            cells[name] = compute(name)
            write_json_atomic({"key": key, "cells": cells}, part, indent=1, sort_keys=False)
        out[name] = cells[name]
    return out


def remove_partial(path: str) -> None:
    """Delete the partial file of the result file ``path`` (after ``path`` is written); no error if there is none."""
    with contextlib.suppress(FileNotFoundError):
        os.remove(partial_path(path))


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

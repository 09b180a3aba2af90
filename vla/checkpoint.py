"""Checkpoint layout, atomic writes and path resolution.

A training run writes into ``<out>/checkpoints/``::

    <out>/checkpoints/00001000/pretrained_model/   what model.save_pretrained writes
                                                  (config.json, model.safetensors, stats.json);
                                                  the EMA weights when EMA is on
    <out>/checkpoints/00001000/training_state/     raw weights, optimiser, scheduler, EMA, RNG,
                                                  trainer_state.json (step, configs)
    <out>/checkpoints/last -> 00001000             relative symlink to the newest complete one

A checkpoint is first written into a hidden temporary folder next to its final
place, then renamed with ``os.replace``; ``last`` is switched (also with
``os.replace``) only after that. A run killed at any moment therefore leaves
``last`` on a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vla.errors import CheckpointError

CHECKPOINTS = "checkpoints"
PRETRAINED = "pretrained_model"
TRAINING_STATE = "training_state"
LAST = "last"
MODEL_CONFIG = "config.json"
TMP_PREFIX = ".tmp-"
TRAINER_STATE = "trainer_state.json"
RAW_WEIGHTS = "model.safetensors"


def step_name(step: int) -> str:
    return f"{step:08d}"


def checkpoints_root(out: str | os.PathLike) -> Path:
    return Path(out) / CHECKPOINTS


# --- atomic small files ------------------------------------------------------------------


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX + path.name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file of a checkpoint; a missing or broken file is a CheckpointError."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing checkpoint file {path}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"broken JSON in {path}: {e}") from None


# --- checkpoint folders --------------------------------------------------------------------


def temp_checkpoint_dir(out: str | os.PathLike, step: int) -> Path:
    """A fresh hidden folder to write checkpoint ``step`` into (same filesystem as the final one)."""
    tmp = checkpoints_root(out) / f"{TMP_PREFIX}{step_name(step)}"
    if tmp.exists():  # left over by a run killed while writing
        shutil.rmtree(tmp)
    (tmp / PRETRAINED).mkdir(parents=True)
    (tmp / TRAINING_STATE).mkdir()
    return tmp


def publish_checkpoint(tmp: str | os.PathLike, out: str | os.PathLike, step: int) -> Path:
    """Move a completely written ``tmp`` folder to its final place, then point ``last`` at it."""
    root = checkpoints_root(out)
    final = root / step_name(step)
    if final.exists():
        # Re-saving a step (a resumed run saving again): swap the old one out first so that the
        # rename below lands on an empty name; `last` may point at it for an instant only.
        old = root / f"{TMP_PREFIX}old-{step_name(step)}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    link_tmp = root / f"{TMP_PREFIX}{LAST}"
    link_tmp.unlink(missing_ok=True)
    os.symlink(final.name, link_tmp)  # relative, so that the out folder can be moved or copied
    os.replace(link_tmp, root / LAST)
    return final


def list_checkpoints(out: str | os.PathLike) -> list[int]:
    """Steps of the complete checkpoints under ``out``, oldest first."""
    root = checkpoints_root(out)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def last_checkpoint(out: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder of a run, or None if it has none yet."""
    link = checkpoints_root(out) / LAST
    if link.is_dir():
        return link.resolve()
    if link.is_symlink():  # dangling: pruned by hand; fall back on the newest complete one
        steps = list_checkpoints(out)
        return checkpoints_root(out) / step_name(steps[-1]) if steps else None
    return None


def prune_checkpoints(out: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (0 keeps all)."""
    if keep_last <= 0:
        return
    root = checkpoints_root(out)
    keep = (root / LAST).resolve().name if (root / LAST).is_dir() else None
    for step in list_checkpoints(out)[:-keep_last]:
        if step_name(step) != keep:
            shutil.rmtree(root / step_name(step), ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The model folder that a ``*_path=`` option means.

    A folder with ``config.json`` is returned as is. A checkpoint folder resolves to its
    ``pretrained_model``; a training run's ``out`` folder (or its ``checkpoints`` folder) to
    the ``pretrained_model`` of its last checkpoint.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"checkpoint path {p} does not exist")
    if (p / MODEL_CONFIG).is_file():
        return p
    if (p / PRETRAINED / MODEL_CONFIG).is_file():
        return p / PRETRAINED
    out = p.parent if p.name == CHECKPOINTS else p
    last = last_checkpoint(out)
    if last is not None and (last / PRETRAINED / MODEL_CONFIG).is_file():
        return last / PRETRAINED
    raise CheckpointError(
        f"{p} is neither a model folder (no {MODEL_CONFIG}) nor a training run with a complete "
        f"checkpoint (no {CHECKPOINTS}/{LAST}/{PRETRAINED}/{MODEL_CONFIG})"
    )


# --- training state: what a resumed run needs beyond the deployable model ------------------


def save_training_state(
    state_dir: Path, model: nn.Module, optimizer, scheduler, ema=None,
    extra_state: Mapping[str, Any] | None = None, meta: dict | None = None,
) -> None:
    """Raw weights (safetensors), optimiser, scheduler, EMA and extra state (.pt), and
    ``trainer_state.json`` (``meta``: step, configs). RNG states are saved per process apart."""
    from safetensors.torch import save_model

    save_model(model, str(state_dir / RAW_WEIGHTS))
    torch.save(optimizer.state_dict(), state_dir / "optimizer.pt")
    torch.save(scheduler.state_dict(), state_dir / "scheduler.pt")
    if ema is not None:
        torch.save(ema.state_dict(), state_dir / "ema.pt")
    if extra_state:
        torch.save({k: v.state_dict() for k, v in extra_state.items()}, state_dir / "extra_state.pt")
    atomic_write_json(state_dir / TRAINER_STATE, meta or {})


def load_training_state(
    state_dir: Path, model: nn.Module, optimizer, scheduler, ema=None,
    extra_state: Mapping[str, Any] | None = None, device: torch.device | str = "cpu",
) -> None:
    """The inverse of ``save_training_state``; anything missing or mismatched is a CheckpointError."""
    from safetensors.torch import load_model

    def load(name: str):
        try:
            return torch.load(state_dir / name, map_location=device, weights_only=True)
        except FileNotFoundError:
            raise CheckpointError(f"{state_dir / name} missing: incomplete checkpoint") from None

    try:
        load_model(model, str(state_dir / RAW_WEIGHTS), strict=True, device=str(device))
        optimizer.load_state_dict(load("optimizer.pt"))
        scheduler.load_state_dict(load("scheduler.pt"))
        if ema is not None:
            ema.load_state_dict(load("ema.pt"))
        extra = load("extra_state.pt") if extra_state else {}
        for k, obj in (extra_state or {}).items():
            obj.load_state_dict(extra[k])
    except (RuntimeError, ValueError, KeyError, FileNotFoundError) as e:
        raise CheckpointError(f"{state_dir}: cannot restore training state: {type(e).__name__}: {e}") from e


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])

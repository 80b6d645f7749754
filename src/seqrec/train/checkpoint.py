"""Atomic checkpoints in safetensors + JSON: model, optimizer and loop state. No pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from seqrec.atomic import atomic_dir
from seqrec.errors import ArtifactError


def state_to_tensors(state: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested state dict into flat tensors and a JSON-able skeleton."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(obj: Any, path: str) -> Any:
        if isinstance(obj, torch.Tensor):
            tensors[path] = obj.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(obj, dict):
            return {"__dict__": [[_key(k), walk(v, f"{path}.{k}")] for k, v in obj.items()]}
        if isinstance(obj, list | tuple):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(obj)]
        return obj

    return tensors, walk(state, prefix or "s")


def tensors_to_state(tensors: dict[str, torch.Tensor], skeleton: Any) -> Any:
    if isinstance(skeleton, dict) and "__tensor__" in skeleton:
        return tensors[skeleton["__tensor__"]]
    if isinstance(skeleton, dict) and "__dict__" in skeleton:
        return {_unkey(k): tensors_to_state(tensors, v) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [tensors_to_state(tensors, v) for v in skeleton]
    return skeleton


def _key(k: Any) -> Any:
    return {"int": k} if isinstance(k, int) else k


def _unkey(k: Any) -> Any:
    return k["int"] if isinstance(k, dict) else k


def save_checkpoint(path: Path, model_state: dict[str, torch.Tensor], best: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any], loop_state: dict[str, Any]) -> None:
    """Write the checkpoint directory at once (a reader sees the previous one or this one)."""
    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in model_state.items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
        opt_tensors, opt_skeleton = state_to_tensors(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"loop": loop_state, "optimizer": opt_skeleton}))


@dataclass(frozen=True)
class Checkpoint:
    model: dict[str, torch.Tensor]  # the last epoch's weights
    best: dict[str, torch.Tensor]  # the best epoch's weights so far
    optimizer: dict[str, Any]  # the optimizer's state dict
    loop: dict[str, Any]  # epoch, history, best epoch, ... (JSON)


def read_checkpoint(path: Path) -> Checkpoint:
    try:
        meta = json.loads((path / "state.json").read_text())
        opt_state = tensors_to_state(load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
        return Checkpoint(load_file(str(path / "model.safetensors")), load_file(str(path / "best.safetensors")),
                          opt_state, meta["loop"])
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: cannot resume from this checkpoint ({exc}); delete it to start over") from exc


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model and optimizer in place; return (best weights, loop state)."""
    ckpt = read_checkpoint(path)
    try:
        model.load_state_dict(ckpt.model)
        optimizer.load_state_dict(ckpt.optimizer)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: cannot resume from this checkpoint ({exc}); delete it to start over") from exc
    return ckpt.best, ckpt.loop


def checkpoint_epoch(path: Path) -> int | None:
    """The last epoch (1-based) a checkpoint in ``path`` holds, or None when there is none to resume."""
    try:
        meta = json.loads((path / "state.json").read_text())
        return int(meta["loop"]["epoch"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        return None

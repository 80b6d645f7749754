"""Atomic checkpoints in safetensors + JSON: model, optimizer and loop state. No pickle."""

from __future__ import annotations

import json
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


def save_checkpoint(path: Path, model: torch.nn.Module, best: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, loop_state: dict[str, Any]) -> None:
    with atomic_dir(path) as tmp:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        save_file({k: v.contiguous() for k, v in best.items()}, str(tmp / "best.safetensors"))
        opt_tensors, opt_skeleton = state_to_tensors(optimizer.state_dict())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"loop": loop_state, "optimizer": opt_skeleton}))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Restore model and optimizer in place; return (best weights, loop state)."""
    try:
        meta = json.loads((path / "state.json").read_text())
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        best = load_file(str(path / "best.safetensors"))
        opt_state = tensors_to_state(load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
        optimizer.load_state_dict(opt_state)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ArtifactError(f"{path}: cannot resume from this checkpoint ({exc}); delete it to start over") from exc
    return best, meta["loop"]


def checkpoint_epoch(path: Path) -> int | None:
    """The last epoch (1-based) a checkpoint in ``path`` holds, or None when there is none to resume."""
    try:
        meta = json.loads((path / "state.json").read_text())
        return int(meta["loop"]["epoch"]) + 1
    except (OSError, ValueError, KeyError, TypeError):
        return None

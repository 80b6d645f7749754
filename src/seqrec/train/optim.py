"""The optimizer: AdamW over parameter groups (weight decay on weight matrices only).

With ``item_optimizer="sparse"`` the item tables (one row per item) get their own update,
:class:`RowAdam`: their lookups give sparse gradients, and Adam's moments exist only for the rows a
step has touched, kept in a pool indexed through a row -> slot map. A step costs the rows it used,
not the catalog, and a 10M-item table carries no 2 x (N, D) of moments for items never touched.
The rest of the model keeps AdamW (:class:`ItemRowsAdamW` holds both behind one optimizer).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from seqrec.errors import SeqrecError
from seqrec.items.tower import ItemTower
from seqrec.train.config import TrainConfig

BETAS = (0.9, 0.999)  # AdamW's defaults, shared by the row update
EPS = 1e-8
SAMPLED_LOSSES = ("sampled", "bce", "gbce")


def param_groups(model: torch.nn.Module, weight_decay: float,
                 exclude: Iterable[torch.Tensor] = ()) -> list[dict[str, Any]]:
    """Weight decay on weight matrices only: never on embeddings, biases or norms. ``exclude``: parameters
    optimised elsewhere (the item tables under the row update)."""
    skip_ids = {id(p) for p in exclude}
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in skip_ids:
                continue
            skip = (isinstance(module, torch.nn.Embedding | torch.nn.LayerNorm) or p.dim() < 2
                    or "norm" in module_name.lower() or "emb" in name)
            (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups: list[dict[str, Any]], lr: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass per tensor instead of a dozen elementwise ops: the 3.5M-row
    item table made the plain update ~7% of a Beauty step on CPU) where every parameter is a float tensor
    on a device that has it. Same update up to float rounding."""
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=lr, fused=fused or None)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with the parameter groups above; with ``cfg.item_optimizer == "sparse"`` the model's item
    tables switch to sparse lookups (and ``cfg.item_dtype`` storage) and get :class:`RowAdam`. The
    tower is set to the mode ``cfg`` asks for either way (a model trained sparse can train dense again)."""
    tower = getattr(model, "tower", None)
    if cfg.item_optimizer == "dense":
        if cfg.item_dtype != "float32":
            raise SeqrecError(f"item_dtype {cfg.item_dtype} (--item-dtype) needs the sparse item optimizer "
                              "(--item-optimizer sparse): AdamW's update on bfloat16 rows would round to nothing")
        if isinstance(tower, ItemTower):
            tower.use_sparse_rows(False)
            _store_tables(tower, torch.float32)
        return _adamw(param_groups(model, cfg.weight_decay), cfg.lr)
    if not isinstance(tower, ItemTower):
        raise SeqrecError(f"{type(model).__name__} has no item tower; use --item-optimizer dense")
    if cfg.privacy.enabled:
        raise SeqrecError("--item-optimizer sparse does not combine with DP-SGD (--dp-epsilon), whose per-user "
                          "clipping needs dense gradients; use --item-optimizer dense")
    if cfg.item_dtype == "bfloat16":
        check_bf16_tables(model, cfg)
    _store_tables(tower, torch.bfloat16 if cfg.item_dtype == "bfloat16" else torch.float32)
    tower.use_sparse_rows(True)
    tables = tower.row_tables()
    return ItemRowsAdamW(param_groups(model, cfg.weight_decay, exclude=tables), tables, cfg.lr)


def _store_tables(tower: ItemTower, dtype: torch.dtype) -> None:
    """bfloat16 tables on request, float32 again after them; other dtypes (a float64 model) stay."""
    if dtype == torch.bfloat16 or any(t.dtype == torch.bfloat16 for t in tower.row_tables()):
        tower.store_tables(dtype)


def check_bf16_tables(model: torch.nn.Module, cfg: TrainConfig) -> None:
    """bfloat16 tables are scored by gathered rows only: a sampled loss and the dot similarity."""
    if cfg.loss.name not in SAMPLED_LOSSES:
        raise SeqrecError(f"--item-dtype bfloat16 needs a sampled loss ({', '.join(SAMPLED_LOSSES)}), not "
                          f"{cfg.loss.name!r}: the full softmax computes a float32 gradient for the whole table")
    if getattr(getattr(model, "config", None), "similarity", "dot") != "dot":
        raise SeqrecError("--item-dtype bfloat16 needs --similarity dot: cosine normalises the whole table")


class RowAdam(torch.optim.Optimizer):
    """Adam (no weight decay) whose moments exist only for the rows that have had a gradient.

    Each parameter's state: ``slot`` (rows,) int64, a row's place in the pools or -1 (no state yet);
    ``exp_avg`` / ``exp_avg_sq`` (capacity, D) float32 pools that grow by half as rows arrive (up to
    one slot per row); ``used`` slots taken; ``step`` steps taken. A sparse gradient updates its rows
    only (as ``torch.optim.SparseAdam``: rows not in a step's gradient keep their moments and values;
    bias corrections use the parameter's step count), with AdamW's formula, so a first step equals
    AdamW's on those rows. A dense gradient updates every row. A bfloat16 parameter is updated in
    float32 and written back with stochastic rounding: an update far below a bfloat16 step then
    moves the row by that much on average instead of never.
    """

    def __init__(self, params: Iterable[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = BETAS, eps: float = EPS, seed: int = 0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError("RowAdam updates rows of 2-d tables")
        self._gen: dict[torch.device, torch.Generator] = {}
        self._seed = seed

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)
        return loss

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.int64)
            state["slot"] = torch.full((p.shape[0],), -1, dtype=torch.int64, device=p.device)
            state["used"] = torch.zeros((), dtype=torch.int64)
            state["exp_avg"] = torch.zeros(0, p.shape[1], dtype=torch.float32, device=p.device)
            state["exp_avg_sq"] = torch.zeros(0, p.shape[1], dtype=torch.float32, device=p.device)
        return state

    def _slots(self, state: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
        """(R,) pool slots of the given distinct rows, taking new slots (zero moments) for new rows."""
        slots = state["slot"][rows]
        new = slots < 0
        n_new = int(new.sum())
        if n_new:
            used = int(state["used"])
            need = used + n_new
            capacity = state["exp_avg"].shape[0]
            if need > capacity:
                grown = min(state["slot"].shape[0], max(need, capacity + capacity // 2, 1024))
                for key in ("exp_avg", "exp_avg_sq"):
                    pool = state[key]
                    bigger = pool.new_zeros(grown, pool.shape[1])
                    bigger[:used] = pool[:used]
                    state[key] = bigger
            fresh = torch.arange(used, need, device=rows.device)
            slots[new] = fresh
            state["slot"][rows[new]] = fresh
            state["used"].fill_(need)
        return slots

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict[str, Any]) -> None:
        state = self._state(p)
        if grad.is_sparse:
            g = grad.float().coalesce()  # duplicates summed in float32
            rows, values = g.indices()[0], g.values()
        else:
            rows, values = torch.arange(p.shape[0], device=p.device), grad.float()
        if rows.numel() == 0:
            return
        state["step"] += 1
        t = int(state["step"])
        beta1, beta2 = group["betas"]
        slots = self._slots(state, rows)
        m = state["exp_avg"][slots].lerp_(values, 1.0 - beta1)  # (R, D)
        v = state["exp_avg_sq"][slots].mul_(beta2).addcmul_(values, values, value=1.0 - beta2)
        state["exp_avg"][slots] = m
        state["exp_avg_sq"][slots] = v
        denom = (v.sqrt_() / (1.0 - beta2**t) ** 0.5).add_(group["eps"])
        new_rows = p[rows].float().addcdiv_(m, denom, value=-group["lr"] / (1.0 - beta1**t))
        p[rows] = new_rows if p.dtype == torch.float32 else self._round(new_rows, p.dtype)

    def _round(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """float32 -> bfloat16 with stochastic rounding (add 16 random low bits, then truncate)."""
        if dtype != torch.bfloat16:
            return x.to(dtype)
        gen = self._gen.get(x.device)
        if gen is None:
            gen = self._gen[x.device] = torch.Generator(x.device).manual_seed(self._seed)
        bits = x.view(torch.int32)
        noise = torch.randint(0, 1 << 16, x.shape, generator=gen, device=x.device, dtype=torch.int32)
        rounded = (bits + noise).bitwise_and_(-65536)  # keep the top 16 bits: a bfloat16 value
        return torch.where(torch.isfinite(x), rounded.view(torch.float32), x).to(dtype)

    def state_dict(self) -> dict[str, Any]:
        """Only the slots taken are saved; the row map is kept as int64 (see :meth:`load_state_dict`)."""
        params = [p for g in self.param_groups for p in g["params"]]
        state: dict[int, dict[str, torch.Tensor]] = {}
        for i, p in enumerate(params):
            if self.state.get(p):
                s, used = self.state[p], int(self.state[p]["used"])
                state[i] = {"step": s["step"], "slot": s["slot"], "used": s["used"],
                            "exp_avg": s["exp_avg"][:used], "exp_avg_sq": s["exp_avg_sq"][:used]}
        groups = [{k: v for k, v in g.items() if k != "params"} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the tensors as saved (Optimizer's own loader would cast the row map to the table's
        dtype) and the groups' settings."""
        params = [p for g in self.param_groups for p in g["params"]]
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("the saved row optimizer has a different number of parameter groups")
        for group, saved in zip(self.param_groups, saved_groups, strict=True):
            group.update({k: tuple(v) if k == "betas" else v for k, v in saved.items() if k != "params"})
        self.state.clear()
        for key, s in state_dict["state"].items():
            p = params[int(key)]
            if s["slot"].shape[0] != p.shape[0] or s["exp_avg"].shape[1:] != p.shape[1:]:
                raise ValueError("the saved row optimizer state does not match the table's shape")
            self.state[p] = {"step": s["step"].to(torch.int64).clone(), "used": s["used"].to(torch.int64).clone(),
                             "slot": s["slot"].to(p.device, torch.int64).clone(),
                             "exp_avg": s["exp_avg"].to(p.device, torch.float32).clone(),
                             "exp_avg_sq": s["exp_avg_sq"].to(p.device, torch.float32).clone()}


class ItemRowsAdamW(torch.optim.Optimizer):
    """AdamW on the model's dense parameters and :class:`RowAdam` on its item tables, as one optimizer.

    ``param_groups`` are the two optimizers' own group dicts (setting a group's ``lr`` reaches the
    optimizer that uses it); ``state_dict`` nests both.
    """

    def __init__(self, dense_groups: list[dict[str, Any]], tables: list[torch.Tensor], lr: float) -> None:
        dense_groups = [g for g in dense_groups if g["params"]]
        self.dense = _adamw(dense_groups, lr) if dense_groups else None
        self.rows = RowAdam(tables, lr=lr)
        super().__init__(self._groups(), {"lr": lr})

    def _groups(self) -> list[dict[str, Any]]:
        return [*(self.dense.param_groups if self.dense else []), *self.rows.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        if self.dense is not None:
            self.dense.step()
        self.rows.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict() if self.dense else None, "rows": self.rows.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "rows" not in state_dict or (state_dict["dense"] is None) != (self.dense is None):
            raise ValueError("the checkpoint's optimizer is not the sparse item optimizer; train with the "
                             "item_optimizer it was saved with")
        if self.dense is not None:
            self.dense.load_state_dict(state_dict["dense"])
        self.rows.load_state_dict(state_dict["rows"])
        self.param_groups = self._groups()  # AdamW's loader replaced its group dicts


def clip_grad_norm(parameters: Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (called as it is when every gradient is dense: the same numbers),
    also for sparse gradients (the item tables under the sparse item optimizer), which torch's cannot
    take: the L2 norm of the per-tensor norms, a sparse row's duplicates summed first, and every
    gradient scaled by ``max_norm / (norm + 1e-6)`` when that is below 1. Returns the total norm."""
    params = [p for p in parameters if p.grad is not None]
    if not any(p.grad is not None and p.grad.is_sparse for p in params):
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    norms = []
    for p in params:
        assert p.grad is not None
        if p.grad.is_sparse:
            p.grad = p.grad.coalesce()
        norms.append(torch.linalg.vector_norm(p.grad.values() if p.grad.is_sparse else p.grad))
    total = torch.linalg.vector_norm(torch.stack([n.to(norms[0].device) for n in norms]))
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for p in params:
        assert p.grad is not None
        (p.grad.values() if p.grad.is_sparse else p.grad).mul_(scale.to(p.grad.device, p.grad.dtype))
    return total

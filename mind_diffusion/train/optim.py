"""Optimizers and their parameter groups (weight decay by name, a delayed group)."""
from __future__ import annotations

from mindspore import nn


def decays(name: str) -> bool:
    """The original's rule (optim.py): weight decay for names without 'layernorm' or 'bias'.
    MindSpore norms are named gamma/beta, so GroupNorm/LayerNorm scales and shifts DO decay."""
    low = name.lower()
    return "layernorm" not in low and "bias" not in low


def weight_decay_groups(params, weight_decay: float) -> list:
    """AdamWeightDecay parameter groups in the original's layout (+ ``order_params``)."""
    params = list(params)
    decay = [p for p in params if decays(p.name)]
    other = [p for p in params if not decays(p.name)]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": float(weight_decay)})
    if other:
        groups.append({"params": other, "weight_decay": 0.0})
    groups.append({"order_params": params})
    return groups


def build_optimizer(params, tcfg, lr, delayed=None):
    """AdamWeightDecay (the original's groups) or Adam over ``params``. ``delayed=(names, lr2)``
    puts the parameters named in ``names`` on their own learning-rate schedule ``lr2``; a list of such
    pairs gives several groups their own schedules (a parameter takes the first pair that names it)."""
    betas = list(tcfg.betas)
    if len(betas) != 2:
        raise ValueError(f"train.betas must be two numbers, got {betas}")
    params = list(params)
    if tcfg.optim == "adamw":
        groups = weight_decay_groups(params, tcfg.weight_decay)
    elif tcfg.optim == "adam":
        groups = [{"params": params}, {"order_params": params}]
    else:
        raise ValueError(f"train.optim must be 'adamw' or 'adam', got {tcfg.optim!r}")
    if delayed is not None:
        specs = [delayed] if isinstance(delayed, tuple) else list(delayed)
        split = []
        for g in groups[:-1]:
            owned = [[p for p in g["params"] if p.name in names] for names, _ in specs]
            taken = set()
            for k, ps in enumerate(owned):   # a parameter named by two pairs goes to the first
                owned[k] = [p for p in ps if p.name not in taken]
                taken.update(p.name for p in owned[k])
            rest = [p for p in g["params"] if p.name not in taken]
            if rest:
                split.append({**g, "params": rest})
            split.extend({**g, "params": ps, "lr": lr2} for ps, (_, lr2) in zip(owned, specs) if ps)
        groups = split + groups[-1:]
    kw = dict(learning_rate=lr, beta1=float(betas[0]), beta2=float(betas[1]), eps=float(tcfg.eps))
    return nn.AdamWeightDecay(groups, **kw) if tcfg.optim == "adamw" else nn.Adam(groups, **kw)

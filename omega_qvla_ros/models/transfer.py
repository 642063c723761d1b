"""Start a model from another trained model's vision tower.

GR00T N1.5 and Pi0.5 both start from a pretrained VLM; our small models have no such
thing, but the vision towers of the `small` sizes of both families are the same
SigLIP-style module (same widths, patch and image size). Copying a trained tower into
a fresh model of the other family gives it features that already locate objects, so
the new model only has to learn the rest. Matching is by the name below the tower's
`vision_model.` prefix, and every shape must agree; nothing is copied partially.
"""
from __future__ import annotations

import torch
from torch import nn

TOWER = "vision_model.embeddings."  # marks where a SigLIP tower's own names start


def _tower_prefix(names) -> str:
    """The prefix in front of a SigLIP tower's own names (`…vision_model.`)."""
    hits = sorted({n[: n.index(TOWER)] for n in names if TOWER in n})
    if len(hits) != 1:
        raise ValueError(f"expected one vision tower, found {len(hits)} ({hits})")
    return hits[0]


def copy_vision_tower(dst: nn.Module, src_state: dict[str, torch.Tensor]) -> list[str]:
    """Copy the vision tower of `src_state` into `dst`; returns the names set in `dst`.

    Raises ValueError naming the first tensor that is missing or differs in shape."""
    dst_state = dst.state_dict()
    dprefix, sprefix = _tower_prefix(dst_state), _tower_prefix(src_state)
    names = [n for n in dst_state if n.startswith(dprefix + "vision_model.")]
    updates = {}
    for name in names:
        src_name = sprefix + name[len(dprefix):]
        if src_name not in src_state:
            raise ValueError(f"source has no {src_name!r} for {name!r}")
        t = src_state[src_name]
        if tuple(t.shape) != tuple(dst_state[name].shape):
            raise ValueError(f"{name}: shape {tuple(dst_state[name].shape)} but the source's "
                             f"{src_name} is {tuple(t.shape)}")
        updates[name] = t.to(dst_state[name].dtype)
    with torch.no_grad():
        for name, t in updates.items():
            dst_state[name].copy_(t)
    return names


def freeze_vision_tower(model: nn.Module) -> int:
    """Stop gradients into the vision tower (GR00T N1.5 trains with its VLM frozen);
    returns the number of frozen parameters."""
    prefix = _tower_prefix(dict(model.named_parameters())) + "vision_model."
    n = 0
    for name, p in model.named_parameters():
        if name.startswith(prefix):
            p.requires_grad_(False)
            n += p.numel()
    return n

"""Pi0.5's calibration forward as stages for the sequential quantizer (models/sequential.py):
SigLIP embeddings, each SigLIP layer, the projector, the prompt embeddings, each trunk
layer (keeping its keys/values for the expert), the trunk's final norm (unused by
Pi0.5's inference, carried along), then the action expert's whole denoising loop. The
stages call the same methods as `Pi05Model.embed_prefix` / `sample_from_prefix`."""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..common import Observation, PrefixCache
from ..sequential import Stage, vision_stages

PG = "paligemma_with_expert.paligemma.model"
VISION = PG + ".vision_tower.vision_model"
LM = PG + ".language_model"
EXPERT = ["paligemma_with_expert.gemma_expert", "action_in_proj", "action_out_proj", "time_mlp_in", "time_mlp_out"]


def stages(model, batches: list[Observation], noise: Callable[[int], torch.Tensor]) -> Iterator[Stage]:
    pg = model._pg
    s: dict = {}

    def prefix():
        s["x"], s["mask"], s["pos"] = zip(*[model.prefix_in(img, o.tokens, o.token_mask, o.state, o.image_mask)
                                            for img, o in zip(s.pop("img"), batches)])
        s["x"], s["kv"] = list(s["x"]), [[] for _ in batches]

    def trunk_layer(layer):
        def run():
            for b in range(len(batches)):
                s["x"][b], kv = layer(s["x"][b], s["pos"][b], key_mask=s["mask"][b])
                s["kv"][b].append(kv)
        return run

    def expert():
        s.pop("x", None)
        for b, o in enumerate(batches):
            kv, mask = s["kv"][b], s["mask"][b]
            cache = PrefixCache(mask=mask, keys=[k for k, _ in kv], values=[v for _, v in kv],
                                next_position=mask.sum(1))
            model.sample_from_prefix(cache, noise(o.batch_size))

    yield from vision_stages(model, batches, s, VISION, [PG + ".multi_modal_projector"],
                             pg.vision_tower.vision_model.encoder.layers)
    yield Stage("prompt embeddings", [LM + ".embed_tokens"], prefix)
    for i, layer in enumerate(pg.language_model.layers):
        yield Stage(f"trunk layer {i}", [f"{LM}.layers.{i}"], trunk_layer(layer))
    yield Stage("trunk norm", [LM + ".norm"], lambda: None)
    yield Stage("action expert (all denoising steps)", EXPERT, expert, repeatable=True)

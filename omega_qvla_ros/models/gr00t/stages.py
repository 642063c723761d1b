"""GR00T's calibration forward as stages for the sequential quantizer (models/sequential.py):
SigLIP embeddings, each SigLIP layer, the projector, the prompt embeddings, each LLM
layer, the VL features (N1.5: final norm, vlln, vl_self_attention) with the state token,
then the DiT's whole denoising loop. The stages call the same methods as
`Gr00tModel.embed_prefix` / `sample_from_prefix`."""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from ..common import Observation
from ..sequential import Stage, vision_stages

EAGLE = "backbone.eagle_model"
VISION = EAGLE + ".vision_model.vision_model"
LM = EAGLE + ".language_model.model"


def stages(model, batches: list[Observation], noise: Callable[[int], torch.Tensor]) -> Iterator[Stage]:
    em = model.backbone.eagle_model
    lm = em.language_model.model
    s: dict = {}

    def prefix():
        s["x"], s["mask"], s["pos"] = map(list, zip(*[model.prefix_in(img, o.tokens, o.token_mask, o.image_mask)
                                                      for img, o in zip(s.pop("img"), batches)]))

    def llm_layer(layer):
        def run():
            for b in range(len(batches)):
                s["x"][b], _ = layer(s["x"][b], s["pos"][b], key_mask=s["mask"][b], causal=True)
        return run

    def vl_features():
        s["prefix"] = [model.prefix_out(x, m, o.state) for x, m, o in zip(s.pop("x"), s["mask"], batches)]

    def dit():  # repeatable: the prefix stays in s
        for p, o in zip(s["prefix"], batches):
            model.sample_from_prefix(p, noise(o.batch_size))

    ah = "action_head"
    yield from vision_stages(model, batches, s, VISION, [EAGLE + ".mlp1"], em.vision_model.vision_model.encoder.layers)
    yield Stage("prompt embeddings", [LM + ".embed_tokens"], prefix)
    for i, layer in enumerate(lm.layers):
        yield Stage(f"LLM layer {i}", [f"{LM}.layers.{i}"], llm_layer(layer))
    vl = [f"{ah}.vlln", f"{ah}.state_encoder"] + ([LM + ".norm"] if hasattr(lm, "norm") else [])
    vl += [f"{ah}.vl_self_attention"] if hasattr(model.action_head, "vl_self_attention") else []
    yield Stage("VL features and state", vl, vl_features)
    yield Stage("DiT (all denoising steps)", [f"{ah}.model", f"{ah}.action_encoder", f"{ah}.action_decoder",
                                              f"{ah}.future_tokens", f"{ah}.position_embedding"], dit,
                repeatable=True)

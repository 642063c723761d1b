"""GR00T N1.5 checkpoints (Isaac-GR00T `GR00T_N1_5`, LeRobot ≤ 0.5 `groot`): tensor names
mapped onto our modules, sizes read from the shapes.

Our GR00T network leaves out parts of N1.5 (see modeling.py: `vl_self_attention`,
multi-embodiment routing beyond one id); their keys are reported as ignored. The
Eagle 2.5 chat template and Qwen3 tokenizer of the real processor are not reproduced,
so an imported GR00T pack maps and quantizes (names, shapes, memory, W4A4 of the real
weights) but its actions are not claimed equal to Isaac-GR00T's.
"""
from __future__ import annotations

import re

from ..configs import LMConfig, VisionConfig
from ..importer import ALIASES, IGNORED, CheckpointFormatError, CheckpointSource, ImportOptions, Imported
from ..processor import Normalizer, ProcessorConfig
from .config import DiTConfig, Gr00tConfig

LLM = "backbone.eagle_model.language_model.model."
VISION = "backbone.eagle_model.vision_model.vision_model."
DIT = "action_head.model."


def _canon(src: CheckpointSource) -> dict[str, tuple[int, ...]]:
    out = {}
    for k, s in src.shapes.items():
        c = k
        for pat, rep in ALIASES[:1]:  # a leading `model.` (LeRobot's wrapper)
            c = pat.sub(rep, c)
        c = re.sub(r"^_groot_model\.", "", c)
        out[c] = s
    return out


def detect(src: CheckpointSource) -> str | None:
    shapes = _canon(src)
    if any(k.startswith(DIT + "transformer_blocks.") for k in shapes) and any(
            k.startswith("backbone.eagle_model.") for k in shapes):
        return "GR00T N1.5"
    return None


def _count(shapes, prefix: str, part: str = "layers") -> int:
    idx = {int(m.group(1)) for k in shapes for m in [re.match(re.escape(prefix) + part + r"\.(\d+)\.", k)] if m}
    return max(idx) + 1 if idx else 0


def _need(shapes, key, what):
    if key not in shapes:
        raise CheckpointFormatError(f"checkpoint lacks {key!r} ({what}); is this a GR00T N1.5 checkpoint?")
    return shapes[key]


def config_from_shapes(src: CheckpointSource, options: ImportOptions, notes: list[str]) -> Gr00tConfig:
    s = _canon(src)
    emb = _need(s, LLM + "embed_tokens.weight", "LLM embeddings")
    q = _need(s, LLM + "layers.0.self_attn.q_proj.weight", "LLM attention")
    k = _need(s, LLM + "layers.0.self_attn.k_proj.weight", "LLM attention")
    qn = _need(s, LLM + "layers.0.self_attn.q_norm.weight", "Qwen3 q_norm")
    head_dim = qn[0]
    llm = LMConfig(q[1], _count(s, LLM), _need(s, LLM + "layers.0.mlp.gate_proj.weight", "LLM MLP")[0],
                   q[0] // head_dim, k[0] // head_dim, head_dim, vocab=emb[0], rope_theta=1e6)
    pe = _need(s, VISION + "embeddings.patch_embedding.weight", "SigLIP patch embedding")
    pos = _need(s, VISION + "embeddings.position_embedding.weight", "SigLIP positions")
    side = int(round(pos[0] ** 0.5))
    vw = pe[0]
    vheads = options.vision_heads or (16 if vw == 1152 else max(1, vw // 64))
    if not options.vision_heads and vw != 1152:
        notes.append(f"SigLIP width {vw}: assumed {vheads} heads; pass --vision-heads if wrong")
    vision = VisionConfig(vw, _count(s, VISION + "encoder."), vheads,
                          _need(s, VISION + "encoder.layers.0.mlp.fc1.weight", "SigLIP MLP")[0], pe[2], side * pe[2])
    blocks = _count(s, DIT, "transformer_blocks")
    tq = _need(s, DIT + "transformer_blocks.0.attn1.to_q.weight", "DiT attention")
    tk = _need(s, DIT + "transformer_blocks.0.attn1.to_k.weight", "DiT cross-attention")
    ff = _need(s, DIT + "transformer_blocks.0.ff.net.0.proj.weight", "DiT feed-forward")
    dit_heads = 32 if tq[0] == 1536 else max(1, tq[0] // 48)
    dit = DiTConfig(blocks=blocks, dim=tq[1], heads=dit_heads, head_dim=tq[0] // dit_heads, ff=ff[0], cross_dim=tk[1])
    se = _need(s, "action_head.state_encoder.layer1.W", "state encoder")
    ae = _need(s, "action_head.action_encoder.W1.W", "action encoder")
    fut = _need(s, "action_head.future_tokens.weight", "future tokens")
    posemb = _need(s, "action_head.position_embedding.weight", "action positions")
    return Gr00tConfig(vision=vision, llm=llm, dit=dit, hidden=se[2], state_dim=se[1], action_dim=ae[1],
                       future_tokens=fut[0], num_embodiments=se[0], max_seq_len=posemb[0])


def load(src: CheckpointSource, options: ImportOptions) -> Imported:
    notes: list[str] = ["GR00T N1.5: names and shapes are mapped; the Eagle chat template, Qwen3 tokenizer "
                        "and vl_self_attention are not reproduced, so actions are not claimed equal to "
                        "Isaac-GR00T's"]
    cfg = config_from_shapes(src, options, notes)
    dof = len(options.joint_names) if options.joint_names else min(cfg.action_dim, 14)
    joints = options.joint_names or [f"joint_{i}" for i in range(dof)]
    proc = ProcessorConfig(cameras=list(options.cameras or ["ego_view"]), joint_names=list(joints),
                           image_size=cfg.vision.image_size, max_tokens=cfg.max_tokens,
                           image_resize="openpi", prompt="instruction",
                           tokenizer="byte", state_norm=Normalizer("identity"), action_norm=Normalizer("identity"))
    aliases = [(re.compile(r"^_groot_model\."), ""), *ALIASES]
    return Imported(config=cfg, processor=proc, tokenizer_file=None, kind="GR00T N1.5", aliases=aliases,
                    ignored=list(IGNORED), notes=notes)

"""GR00T N1.5 checkpoints (Isaac-GR00T `GR00T_N1_5`, LeRobot ≤ 0.5.1 `groot` with its
`_groot_model.` prefix) imported as the "n15" variant: sizes from the tensor shapes, head
counts from config.json / eagle_config.json where present (published defaults else).

Mapped beyond the tensor names: the tied `lm_head` (used for embed_tokens when a file
holds only the head); ignored: the SigLIP attention-pooling `head.*`, which N1.5 builds
but never runs. The processor speaks N1.5's Eagle chat prompt ("gr00t_n15", left padded,
the Qwen3 tokenizer.json of the Eagle processor, given with --tokenizer). Normalisation:
LeRobot's groot min/max statistics when its policy_preprocessor.json is there; Isaac-GR00T's
metadata.json is not read (its modality keys and modes live in the data config the
checkpoint does not carry), so those imports normalise with identity and say so.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..configs import LMConfig, VisionConfig
from ..importer import ALIASES, CheckpointFormatError, CheckpointSource, ImportOptions, Imported, read_json_object
from ..processor import Normalizer, ProcessorConfig
from ..tokenizer import TOKENIZER_FILES, TokenizerFileError
from .config import IMG_CONTEXT_ID, DiTConfig, Gr00tConfig, n15_max_tokens

LLM = "backbone.eagle_model.language_model.model."
LM_HEAD = "backbone.eagle_model.language_model.lm_head.weight"
VISION = "backbone.eagle_model.vision_model.vision_model."
DIT = "action_head.model."
VLSA = "action_head.vl_self_attention."
PREFIXES = [ALIASES[0], (re.compile(r"^_groot_model\."), "")]  # LeRobot: `model.` / `_groot_model.`
IGNORED_N15 = [re.compile(p) for p in (r"lm_head\.", r"\.rotary_emb\.", r"num_batches_tracked$",
                                       r"vision_model\.vision_model\.head\.")]


def _canon(src: CheckpointSource) -> dict[str, tuple[int, ...]]:
    return {_canon_key(k): s for k, s in src.shapes.items()}


def _canon_key(k: str) -> str:
    for pat, rep in PREFIXES:
        k = pat.sub(rep, k)
    return k


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


def _heads(inner: int, given, head_dim: int, what: str, notes: list[str]) -> int:
    """Attention heads from config.json, else the published head_dim (noted)."""
    if given:
        heads = int(given)
    else:
        heads = max(1, inner // head_dim)
        notes.append(f"{what}: no config.json head count; assumed head_dim {head_dim} → {heads} heads")
    if inner % heads:
        raise CheckpointFormatError(f"{what}: width {inner} not divisible by {heads} heads")
    return heads


def config_from_shapes(src: CheckpointSource, options: ImportOptions, notes: list[str]) -> Gr00tConfig:
    s = _canon(src)
    cj = src.config_json or {}
    head_cfg = cj.get("action_head_cfg") or {}
    eagle = read_json_object(src.root / "eagle_config.json") or {}
    text, vis_cfg = eagle.get("text_config") or {}, eagle.get("vision_config") or {}

    emb = s.get(LLM + "embed_tokens.weight") or s.get(LM_HEAD)
    if emb is None:
        raise CheckpointFormatError("checkpoint lacks the LLM's embed_tokens (and lm_head): not GR00T N1.5?")
    q = _need(s, LLM + "layers.0.self_attn.q_proj.weight", "LLM attention")
    k = _need(s, LLM + "layers.0.self_attn.k_proj.weight", "LLM attention")
    head_dim = _need(s, LLM + "layers.0.self_attn.q_norm.weight", "Qwen3 q_norm")[0]
    _need(s, LLM + "norm.weight", "the Qwen3 final norm N1.5's VL features pass through")
    llm = LMConfig(q[1], _count(s, LLM), _need(s, LLM + "layers.0.mlp.gate_proj.weight", "LLM MLP")[0],
                   q[0] // head_dim, k[0] // head_dim, head_dim, vocab=emb[0],
                   rope_theta=float(text.get("rope_theta", 1e6)))

    pe = _need(s, VISION + "embeddings.patch_embedding.weight", "SigLIP patch embedding")
    pos = _need(s, VISION + "embeddings.position_embedding.weight", "SigLIP positions")
    side = int(round(pos[0] ** 0.5))
    if side * side != pos[0]:
        raise CheckpointFormatError(f"SigLIP has {pos[0]} positions, not a square grid")
    vw = pe[0]
    vheads = options.vision_heads or vis_cfg.get("num_attention_heads") or (16 if vw == 1152 else None)
    if vheads is None:
        raise CheckpointFormatError(f"SigLIP width {vw}: cannot tell its head count (no eagle_config.json); "
                                    "pass --vision-heads N")
    vision = VisionConfig(vw, _count(s, VISION + "encoder."), int(vheads),
                          _need(s, VISION + "encoder.layers.0.mlp.fc1.weight", "SigLIP MLP")[0], pe[2], side * pe[2])
    proj = _need(s, "backbone.eagle_model.mlp1.0.weight", "vision projector")
    if proj[1] != vw or any(k.startswith("backbone.eagle_model.mlp1.1.") for k in s):
        raise CheckpointFormatError(f"projector mlp1 is {proj} with more layers: a pixel-shuffle Eagle (GR00T N1?), "
                                    "not N1.5's single Linear")

    dcfg = head_cfg.get("diffusion_model_cfg") or {}
    tq = _need(s, DIT + "transformer_blocks.0.attn1.to_q.weight", "DiT attention")
    tk = _need(s, DIT + "transformer_blocks.0.attn1.to_k.weight", "DiT cross-attention")
    ff = _need(s, DIT + "transformer_blocks.0.ff.net.0.proj.weight", "DiT feed-forward")
    dit_heads = _heads(tq[0], dcfg.get("num_attention_heads"), 48, "DiT", notes)
    dit = DiTConfig(blocks=_count(s, DIT, "transformer_blocks"), dim=tq[1], heads=dit_heads,
                    head_dim=tq[0] // dit_heads, ff=ff[0], cross_dim=tk[1])
    vl_blocks = _count(s, VLSA, "transformer_blocks")
    if not vl_blocks:
        raise CheckpointFormatError("checkpoint has no action_head.vl_self_attention blocks (N1.5 has 4)")
    vl_heads = _heads(llm.width, (head_cfg.get("vl_self_attention_cfg") or {}).get("num_attention_heads"), 64,
                      "vl_self_attention", notes)

    se = _need(s, "action_head.state_encoder.layer1.W", "state encoder")
    ae = _need(s, "action_head.action_encoder.W1.W", "action encoder")
    fut = _need(s, "action_head.future_tokens.weight", "future tokens")
    posemb = _need(s, "action_head.position_embedding.weight", "action positions")
    cameras = len(options.cameras) if options.cameras else len(_lerobot_cameras(cj)) or 1
    image_token_id = int(eagle.get("image_token_index", IMG_CONTEXT_ID))
    return Gr00tConfig(vision=vision, llm=llm, dit=dit, hidden=se[2], state_dim=se[1], action_dim=ae[1],
                       action_horizon=int(head_cfg.get("action_horizon", cj.get("chunk_size", 16))),
                       future_tokens=fut[0], num_embodiments=se[0], max_seq_len=posemb[0],
                       num_steps=int(head_cfg.get("num_inference_timesteps", 4)),
                       max_tokens=n15_max_tokens(cameras, pos[0]), cameras=cameras, variant="n15",
                       image_token_id=image_token_id, vl_blocks=vl_blocks, vl_heads=vl_heads)


# ---------------------------------------------------------------------------- processor
def _lerobot_cameras(cj: dict) -> list[str]:
    """LeRobot groot feeds its image features in sorted key order."""
    feats = [k for k, v in (cj.get("input_features") or {}).items()
             if isinstance(v, dict) and v.get("type") == "VISUAL"]
    return [k.split("observation.images.", 1)[-1] for k in sorted(feats)]


def _lerobot_pack_step(root: Path) -> tuple[Path, dict] | None:
    """LeRobot's GrootPackInputsStep (embodiment tag/mapping, min/max stats file)."""
    from ..pi05.checkpoint import _pipeline

    pre = _pipeline(root, "policy_preprocessor")
    if pre is None:
        return None
    for st in pre[1]["steps"]:
        if isinstance(st, dict) and str(st.get("registry_name", "")).startswith("groot_pack_inputs"):
            return pre[0], st
    return None


def _min_max(stats: dict, feature: str, where: Path) -> Normalizer:
    st = stats.get(feature) or {}
    if "min" not in st or "max" not in st:
        raise CheckpointFormatError(f"{where}: min_max normalisation of {feature} needs min/max statistics")
    return Normalizer("min_max", st["min"], st["max"], convention="lerobot", dtype="float32")


def _embodiment(cfg: Gr00tConfig, options: ImportOptions, step: dict | None, cj: dict, notes: list[str]) -> int:
    if options.embodiment_id is not None:
        e = int(options.embodiment_id)
    elif step is not None:
        c = step.get("config") or {}
        tag = c.get("embodiment_tag", cj.get("embodiment_tag"))
        mapping = c.get("embodiment_mapping") or {}
        if tag not in mapping:
            raise CheckpointFormatError(f"LeRobot groot embodiment tag {tag!r} not in its mapping {mapping}")
        e = int(mapping[tag])
    else:
        e = 0
        notes.append("embodiment id not given: 0 used; N1.5 routes its state/action encoders by embodiment "
                     "(Isaac-GR00T/LeRobot tags, e.g. gr1 24, new_embodiment 31): set ImportOptions.embodiment_id")
    if not 0 <= e < cfg.num_embodiments:
        raise CheckpointFormatError(f"embodiment id {e} outside the checkpoint's {cfg.num_embodiments} embodiments")
    return e


def _tokenizer_file(src: CheckpointSource, options: ImportOptions, notes: list[str]) -> Path | None:
    if options.tokenizer:
        p = Path(options.tokenizer)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file() or p.suffix != ".json":
            raise TokenizerFileError(f"--tokenizer {p}: GR00T N1.5 needs the Eagle processor's tokenizer.json")
        return p
    hit = [src.root / n for n in TOKENIZER_FILES[:1] if (src.root / n).is_file()]
    if hit:
        return hit[0]
    notes.append("no tokenizer: the pack needs the Qwen3 tokenizer.json of the Eagle processor "
                 "(lerobot/eagle2hg-processor-groot-n1p5, with <IMG_CONTEXT> = 151669); pass --tokenizer PATH")
    return None


def load(src: CheckpointSource, options: ImportOptions) -> Imported:
    notes: list[str] = []
    cfg = config_from_shapes(src, options, notes)
    cj = src.config_json or {}
    found = _lerobot_pack_step(src.root)
    step = found[1] if found else None
    cfg.embodiment_id = _embodiment(cfg, options, step, cj, notes)
    dof = len(options.joint_names) if options.joint_names else min(cfg.action_dim, cfg.state_dim, 14)
    joints = options.joint_names or [f"joint_{i}" for i in range(dof)]
    if not options.joint_names:
        notes.append(f"joint names not in the checkpoint: named joint_0…joint_{dof - 1}; pass --joint-names")
    cams = list(options.cameras or _lerobot_cameras(cj) or ["ego_view"])
    state_norm = action_norm = Normalizer("identity")
    if step is not None and (step.get("config") or {}).get("normalize_min_max", True) and step.get("state_file"):
        from ..pi05.checkpoint import _read_stats

        stats = _read_stats(src.root / step["state_file"])
        state_norm = _min_max(stats, "observation.state", found[0])
        action_norm = _min_max(stats, "action", found[0])
        notes.append("LeRobot groot min/max normalisation: a joint whose min equals its max maps to -1 here "
                     "(LeRobot: 0)")
    else:
        notes.append("normalisation: identity (Isaac-GR00T's experiment_cfg/metadata.json statistics are not "
                     "read); feed states/actions already normalised as the checkpoint was trained")
    notes.append("images: resized with padding to the SigLIP size (N1.5's Eagle resizes without padding); "
                 "exact for camera images already at that size")
    tok = _tokenizer_file(src, options, notes)
    proc = ProcessorConfig(cameras=cams, joint_names=list(joints), image_size=cfg.vision.image_size,
                           max_tokens=cfg.max_tokens, image_resize="openpi", prompt="gr00t_n15",
                           tokenizer="tokenizer.json", state_norm=state_norm, action_norm=action_norm)
    if len(proc.cameras) != cfg.cameras:
        raise CheckpointFormatError(f"{len(proc.cameras)} cameras in the processor, {cfg.cameras} in the config")
    lm_head = next((k for k in src.shapes if _canon_key(k) == LM_HEAD), None)
    tied = {LLM + "embed_tokens.weight": lm_head} if lm_head else {}
    return Imported(config=cfg, processor=proc, tokenizer_file=tok, kind=detect(src) or "GR00T N1.5",
                    aliases=[*PREFIXES, *ALIASES[1:]], ignored=list(IGNORED_N15), tied=tied, notes=notes)

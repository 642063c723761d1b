"""Pi0.5 checkpoints: LeRobot `pi05` (save_pretrained folders) and openpi (PyTorch
`model.safetensors` + `assets/*/norm_stats.json`). Sizes come from tensor shapes and,
where present, LeRobot's config.json; the processor from LeRobot's processor files or
openpi's norm stats. Conventions from ../shared/LEROBOT_PI05.md and openpi's code.

Fixed by LeRobot/openpi rather than by shapes (recorded in the import notes):
- 8 attention heads in both Gemmas (`compute_layer_complete` hard-codes them); head_dim
  and kv heads then follow from q/k projection shapes;
- SigLIP heads: 16 for the stock so400m tower (width 1152, which stock LeRobot always
  builds); for other widths the trunk's head_dim when it divides the width, else
  `--vision-heads`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..configs import LMConfig, VisionConfig
from ..importer import (ALIASES, IGNORED, CheckpointFormatError, CheckpointSource, ImportOptions,
                        Imported, read_json_object)
from ..processor import Normalizer, ProcessorConfig
from ..tokenizer import TOKENIZER_FILES, TokenizerFileError
from .config import Pi05Config

LEROBOT_HEADS = 8
OPENPI_CAMERAS = ["base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb"]
ALOHA_JOINTS = [f"{s}_{j}" for s in ("left", "right") for j in
                ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")]
TRUNK = "paligemma_with_expert.paligemma.model.language_model."
EXPERT = "paligemma_with_expert.gemma_expert.model."
VISION = "paligemma_with_expert.paligemma.model.vision_tower.vision_model."


def _canon_shapes(src: CheckpointSource) -> dict[str, tuple[int, ...]]:
    """Shapes under our names (aliases applied), for reading sizes."""
    out = {}
    for k, s in src.shapes.items():
        c = k
        for pat, rep in ALIASES:
            c = pat.sub(rep, c)
        out[c] = s
    return out


def detect(src: CheckpointSource) -> str | None:
    cj = src.config_json or {}
    shapes = _canon_shapes(src)
    has_expert = any(k.startswith(EXPERT) for k in shapes)
    if any(k.startswith(("state_proj.", "action_time_mlp_in.")) for k in shapes) and has_expert:
        raise CheckpointFormatError(f"{src.root}: a Pi0 checkpoint (state_proj / action_time_mlp); "
                                    "only Pi0.5 is supported")
    if cj.get("type") == "pi05" or (has_expert and "time_mlp_in.weight" in shapes):
        return "LeRobot pi05" if _lerobot_files(src.root) or cj.get("type") == "pi05" else "openpi pi05"
    return None


def _lerobot_files(root: Path) -> list[Path]:
    return sorted(root.glob("policy_preprocessor*.json")) + sorted(root.glob("policy_postprocessor*.json"))


def _count(shapes, prefix: str) -> int:
    idx = {int(m.group(1)) for k in shapes for m in [re.match(re.escape(prefix) + r"layers\.(\d+)\.", k)] if m}
    return max(idx) + 1 if idx else 0


def _need(shapes, key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointFormatError(f"checkpoint lacks {key!r} ({what}); is this a Pi0.5 checkpoint?")
    return shapes[key]


def _lm(shapes, prefix: str, vocab: int, heads: int, name: str) -> LMConfig:
    layers = _count(shapes, prefix)
    if layers == 0:
        raise CheckpointFormatError(f"checkpoint has no {name} layers under {prefix!r}")
    q = _need(shapes, prefix + "layers.0.self_attn.q_proj.weight", f"{name} attention")
    k = _need(shapes, prefix + "layers.0.self_attn.k_proj.weight", f"{name} attention")
    mlp = _need(shapes, prefix + "layers.0.mlp.gate_proj.weight", f"{name} MLP")[0]
    width = q[1]
    if q[0] % heads:
        raise CheckpointFormatError(f"{name}: q_proj has {q[0]} outputs, not a multiple of {heads} heads")
    head_dim = q[0] // heads
    if k[0] % head_dim:
        raise CheckpointFormatError(f"{name}: k_proj has {k[0]} outputs for head_dim {head_dim}")
    return LMConfig(width, layers, mlp, heads, k[0] // head_dim, head_dim, vocab=vocab)


def config_from_shapes(src: CheckpointSource, options: ImportOptions, notes: list[str]) -> Pi05Config:
    shapes = _canon_shapes(src)
    cj = src.config_json or {}
    emb = shapes.get(TRUNK + "embed_tokens.weight") or shapes.get("paligemma_with_expert.paligemma.lm_head.weight")
    if emb is None:
        raise CheckpointFormatError("checkpoint lacks the trunk's embed_tokens (and lm_head): not a Pi0.5 checkpoint?")
    trunk = _lm(shapes, TRUNK, emb[0], LEROBOT_HEADS, "trunk")
    expert = _lm(shapes, EXPERT, emb[0], LEROBOT_HEADS, "action expert")
    pe = _need(shapes, VISION + "embeddings.patch_embedding.weight", "SigLIP patch embedding")
    pos = _need(shapes, VISION + "embeddings.position_embedding.weight", "SigLIP positions")
    vw, patch = pe[0], pe[2]
    side = int(round(pos[0] ** 0.5))
    if side * side != pos[0]:
        raise CheckpointFormatError(f"SigLIP has {pos[0]} positions, not a square grid")
    res = cj.get("image_resolution")
    image_size = side * patch
    if res and (int(res[0]) != image_size or int(res[1]) != image_size):
        raise CheckpointFormatError(f"config.json image_resolution {res} but the SigLIP weights are for "
                                    f"{image_size}×{image_size}")
    if options.vision_heads:
        vheads = options.vision_heads
    elif vw == 1152:
        vheads = 16
    elif vw % trunk.head_dim == 0:
        vheads = vw // trunk.head_dim
        notes.append(f"SigLIP width {vw} is not the stock 1152: assumed {vheads} heads (head_dim "
                     f"{trunk.head_dim}, as the trunk's); pass --vision-heads if that is wrong")
    else:
        raise CheckpointFormatError(f"SigLIP width {vw}: cannot tell its head count from the weights; "
                                    "pass --vision-heads N")
    if vw % vheads:
        raise CheckpointFormatError(f"SigLIP width {vw} is not divisible by {vheads} heads")
    vision = VisionConfig(vw, _count(shapes, VISION + "encoder."),
                          vheads, _need(shapes, VISION + "encoder.layers.0.mlp.fc1.weight", "SigLIP MLP")[0],
                          patch, image_size)
    action_dim = _need(shapes, "action_in_proj.weight", "action input projection")[1]
    features = [k for k, v in (cj.get("input_features") or {}).items()
                if isinstance(v, dict) and v.get("type") == "VISUAL" and ".empty_camera_" not in k]
    cameras = (len(features) + int(cj.get("empty_cameras", 0)) if features
               else len(options.cameras or OPENPI_CAMERAS))
    return Pi05Config(vision=vision, trunk=trunk, expert=expert, cameras=cameras,
                      action_horizon=int(cj.get("chunk_size", 50)), action_dim=action_dim,
                      num_steps=int(cj.get("num_inference_steps", 10)),
                      max_tokens=int(cj.get("tokenizer_max_length", 200)), state_encoding="prompt")


# ---------------------------------------------------------------------------- processors
def _read_stats(path: Path) -> dict[str, dict[str, list[float]]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        flat = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointFormatError(f"{path}: not a readable safetensors file ({e})") from None
    out: dict[str, dict[str, list[float]]] = {}
    for k, v in flat.items():
        feat, stat = k.rsplit(".", 1)
        out.setdefault(feat, {})[stat] = [float(x) for x in v.reshape(-1).tolist()]
    return out


MODE_STATS = {"QUANTILES": ("quantiles", "q01", "q99"), "QUANTILE10": ("quantiles", "q10", "q90"),
              "MIN_MAX": ("min_max", "min", "max"), "MEAN_STD": ("mean_std", "mean", "std")}


def _normalizer(mode: str, stats: dict | None, feature: str, eps: float, where: Path) -> Normalizer:
    if mode == "IDENTITY":
        return Normalizer("identity")
    if mode not in MODE_STATS:
        raise CheckpointFormatError(f"{where}: normalisation mode {mode!r} for {feature} is not supported")
    kind, lo, hi = MODE_STATS[mode]
    if not stats or lo not in stats or hi not in stats:
        raise CheckpointFormatError(f"{where}: {mode} normalisation of {feature} needs {lo}/{hi} statistics")
    return Normalizer(kind, stats[lo], stats[hi], convention="lerobot", eps=eps, dtype="float32")


def _pipeline(root: Path, name: str) -> tuple[Path, dict] | None:
    p = root / f"{name}.json"
    d = read_json_object(p)
    if d is None:
        return None
    if not isinstance(d.get("steps"), list):
        raise CheckpointFormatError(f"{p}: not a LeRobot processor pipeline (no 'steps')")
    return p, d


def _step(pipe: dict, registry_name: str) -> dict | None:
    for s in pipe["steps"]:
        if isinstance(s, dict) and s.get("registry_name") == registry_name:
            return s
    return None


def relative_mask(joint_names: list[str], exclude: list[str]) -> list[bool]:
    """LeRobot RelativeActionsProcessorStep's mask: a joint is absolute when an exclude
    token equals or appears in its (lower-cased) name."""
    tokens = [str(t).lower() for t in exclude if t]
    return [not any(t == n.lower() or t in n.lower() for t in tokens) for n in joint_names]


def _joint_names(options: ImportOptions, cj: dict, dof: int, notes: list[str]) -> list[str]:
    names = options.joint_names or cj.get("action_feature_names")
    if names:
        if len(names) != dof:
            raise CheckpointFormatError(f"{len(names)} joint names for {dof} action dimensions")
        return list(names)
    if dof == 14:
        notes.append("joint names not in the checkpoint: assumed the ALOHA bimanual order "
                     "(left/right waist…gripper); pass --joint-names to set them")
        return list(ALOHA_JOINTS)
    notes.append(f"joint names not in the checkpoint: named joint_0…joint_{dof - 1}; pass --joint-names")
    return [f"joint_{i}" for i in range(dof)]


def _lerobot_processor(src: CheckpointSource, cfg: Pi05Config, options: ImportOptions, notes: list[str]
                       ) -> ProcessorConfig:
    root, cj = src.root, src.config_json or {}
    pre = _pipeline(root, "policy_preprocessor")
    post = _pipeline(root, "policy_postprocessor")
    if pre is None or post is None:
        raise CheckpointFormatError(f"{root}: LeRobot policy without policy_preprocessor.json / "
                                    "policy_postprocessor.json (normalisation statistics are needed)")
    (pre_path, pre_d), (post_path, post_d) = pre, post
    norm = _step(pre_d, "normalizer_processor")
    unnorm = _step(post_d, "unnormalizer_processor")
    if norm is None or unnorm is None:
        raise CheckpointFormatError(f"{root}: the processors have no normalizer/unnormalizer step")
    for step, path in ((norm, pre_path), (unnorm, post_path)):
        if "state_file" not in step:
            raise CheckpointFormatError(f"{path}: the (un)normalizer step names no statistics file")
    stats = _read_stats(root / norm["state_file"])
    out_stats = _read_stats(root / unnorm["state_file"])
    ncfg, ucfg = norm.get("config", {}), unnorm.get("config", {})
    state_mode = (ncfg.get("norm_map") or {}).get("STATE", "IDENTITY")
    action_mode = (ucfg.get("norm_map") or {}).get("ACTION", "IDENTITY")
    state_feat = ncfg.get("features", {}).get("observation.state", {})
    action_feat = (cj.get("output_features") or {}).get("action", {})
    dof = int((action_feat.get("shape") or [0])[0]) or len(out_stats.get("action", {}).get("q01", []))
    sdim = int((state_feat.get("shape") or [dof])[0])
    if sdim != dof:
        raise CheckpointFormatError(f"state has {sdim} dims and actions {dof}: the runtime drives the "
                                    "joints it observes, so both must be the same joints")
    joints = _joint_names(options, cj, dof, notes)
    tok = _step(pre_d, "tokenizer_processor") or {}
    max_tokens = int(tok.get("config", {}).get("max_length", cfg.max_tokens))
    if max_tokens != cfg.max_tokens:
        raise CheckpointFormatError(f"tokenizer max_length {max_tokens} differs from config.json's "
                                    f"tokenizer_max_length {cfg.max_tokens}")
    features = [k for k, v in (cj.get("input_features") or {}).items()
                if isinstance(v, dict) and v.get("type") == "VISUAL" and ".empty_camera_" not in k]
    empty = int(cj.get("empty_cameras", 0))
    cams = [k.split("observation.images.", 1)[-1] for k in features]
    rel = _step(pre_d, "relative_actions_processor")
    relative = None
    if rel and rel.get("config", {}).get("enabled"):
        relative = relative_mask(rel["config"].get("action_names") or joints, rel["config"].get("exclude_joints") or [])
    return ProcessorConfig(
        cameras=cams, joint_names=joints, image_size=cfg.vision.image_size, max_tokens=cfg.max_tokens,
        empty_cameras=empty, missing_cameras_last=True, image_resize="openpi", prompt="pi05",
        tokenizer="(file)",
        state_norm=_normalizer(state_mode, stats.get("observation.state"), "observation.state",
                               float(ncfg.get("eps", 1e-8)), pre_path),
        action_norm=_normalizer(action_mode, out_stats.get("action"), "action", float(ucfg.get("eps", 1e-8)),
                                post_path),
        relative_actions=relative)


def _openpi_processor(src: CheckpointSource, cfg: Pi05Config, options: ImportOptions, notes: list[str]
                      ) -> ProcessorConfig:
    root = src.root
    if options.norm_stats:
        path = Path(options.norm_stats)
    else:
        found = sorted(root.glob("norm_stats.json")) + sorted(root.glob("assets/*/norm_stats.json"))
        if not found:
            raise CheckpointFormatError(f"{root}: no norm_stats.json (openpi keeps it under assets/<asset_id>/); "
                                        "pass --norm-stats PATH")
        if len(found) > 1:
            raise CheckpointFormatError(f"{root}: several norm_stats.json ({[str(f) for f in found]}); "
                                        "pick one with --norm-stats")
        path = found[0]
    if not path.is_file():
        raise CheckpointFormatError(f"{path}: no such norm stats file")
    try:
        d = json.loads(path.read_text())
        ns = d.get("norm_stats", d)
        state, actions = ns["state"], ns["actions"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointFormatError(f"{path}: not an openpi norm_stats.json ({type(e).__name__}: {e})") from None

    def norm(stats, what):
        if "q01" not in stats or "q99" not in stats:
            raise CheckpointFormatError(f"{path}: {what} lacks q01/q99 (Pi0.5 normalises with quantiles)")
        return Normalizer("quantiles", stats["q01"], stats["q99"], convention="openpi", dtype="float32")

    dof = len(options.joint_names) if options.joint_names else len(actions["q01"])
    joints = _joint_names(options, {}, dof, notes)
    cams = list(options.cameras or OPENPI_CAMERAS)
    notes.append("openpi: robot-specific input/output transforms (e.g. AlohaInputs' joint flips and "
                 "gripper conversion) are not applied; the robot must publish the joints as the model saw them")
    return ProcessorConfig(cameras=cams, joint_names=joints, image_size=cfg.vision.image_size,
                           max_tokens=cfg.max_tokens, missing_cameras_last=False, image_resize="openpi",
                           prompt="pi05", tokenizer="(file)", state_norm=norm(state, "state"),
                           action_norm=norm(actions, "actions"))


def _tokenizer_file(src: CheckpointSource, options: ImportOptions) -> Path:
    if options.tokenizer:
        p = Path(options.tokenizer)
        if p.is_dir():
            hit = [p / n for n in TOKENIZER_FILES if (p / n).is_file()]
            if not hit:
                raise TokenizerFileError(f"--tokenizer {p}: no {' / '.join(TOKENIZER_FILES)} in this folder")
            p = hit[0]
        if not p.is_file():
            raise TokenizerFileError(f"--tokenizer {p}: no such file")
        return p
    hit = [src.root / n for n in TOKENIZER_FILES if (src.root / n).is_file()]
    if hit:
        return hit[0]
    raise TokenizerFileError(
        f"{src.root}: no tokenizer next to the checkpoint; Pi0.5 needs the PaliGemma tokenizer "
        "(tokenizer.json or tokenizer.model of google/paligemma-3b-pt-224, or openpi's "
        "paligemma_tokenizer.model): pass --tokenizer PATH (nothing is downloaded)")


def load(src: CheckpointSource, options: ImportOptions) -> Imported:
    notes: list[str] = []
    cfg = config_from_shapes(src, options, notes)
    kind = detect(src) or "pi05"
    if kind.startswith("LeRobot"):
        proc = _lerobot_processor(src, cfg, options, notes)
    else:
        proc = _openpi_processor(src, cfg, options, notes)
    tok = _tokenizer_file(src, options)
    proc.tokenizer = tok.name if tok.suffix == ".json" else "tokenizer.model"
    if len(proc.cameras) + proc.empty_cameras != cfg.cameras:
        raise CheckpointFormatError(f"{len(proc.cameras) + proc.empty_cameras} cameras in the processor, "
                                    f"{cfg.cameras} in the config")
    if proc.action_norm.dims is not None and proc.action_norm.dims < len(proc.joint_names):
        raise CheckpointFormatError("action statistics cover fewer dims than the robot's joints")
    if len(proc.joint_names) > cfg.action_dim:
        raise CheckpointFormatError(f"{len(proc.joint_names)} joints but the model outputs {cfg.action_dim}")
    tied = {TRUNK + "embed_tokens.weight": next(
        (k for k in src.shapes if k.endswith("paligemma.lm_head.weight")), "")}
    return Imported(config=cfg, processor=proc, tokenizer_file=tok, kind=kind, aliases=list(ALIASES),
                    ignored=list(IGNORED), tied={k: v for k, v in tied.items() if v}, notes=notes)

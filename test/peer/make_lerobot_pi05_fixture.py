#!/usr/bin/env python3
"""Build a tiny LeRobot ``PI05Policy`` offline and dump a peer-equivalence fixture.

What it does
------------
With *stock* LeRobot 0.6.1 code (no copy of its model), this script

1. builds a tiny ``PI05Policy`` (pi0.5: PaliGemma VLM + Gemma action expert with
   adaRMS) on the CPU, with every parameter redrawn from a seeded generator;
2. builds LeRobot's own input/output pipelines with
   ``make_pi05_pre_post_processors(config, dataset_stats)`` from synthetic stats and a
   small stand-in word-level tokenizer (the PaliGemma tokenizer is not obtainable
   offline);
3. runs raw observation -> pre-processor -> ``PI05Policy.predict_action_chunk(batch,
   noise=...)`` -> post-processor, plus ``PI05Pytorch.sample_actions`` and the training
   forward (``PI05Pytorch.forward``) on one fixed batch;
4. saves, into ``--out``:
   * ``config.json`` + ``model.safetensors`` exactly as ``policy.save_pretrained`` writes
     them, except that ``model.safetensors`` is rewritten with ``embed_tokens.weight``
     trimmed to the stand-in vocabulary (V rows) and both unused ``lm_head`` tensors
     dropped (every other tensor and key name unchanged) -- this keeps the fixture tiny;
   * the pre/post-processor files exactly as their ``save_pretrained`` writes them;
   * ``tokenizer.json`` (the stand-in tokenizer, padding/truncation to
     ``tokenizer_max_length`` built in);
   * ``reference.safetensors`` + ``reference.json``: raw inputs, intermediates and
     outputs (see ``reference.json["tensors"]`` for a description of each tensor).

Why
---
The project re-implements pi0.5 in plain PyTorch. This fixture lets a test check our
implementation for equality against LeRobot *from the raw observation* (normalisation,
state discretisation, prompt, tokens, image resize/pad, prefix, flow-matching sampling,
un-normalisation, training loss) without LeRobot, Hugging Face downloads or a GPU.
Fixture B (``--variant b``) uses other sizes, so an importer must read sizes from
tensor shapes rather than assume them.

It is never a project dependency: it runs only in a throw-away side venv.

Side venv (Python 3.12, CPU is enough)::

    python3.12 -m venv .venv-peer
    .venv-peer/bin/pip install torch==2.13.0 torchvision==0.29.1
    .venv-peer/bin/pip install --no-deps lerobot==0.6.1
    .venv-peer/bin/pip install transformers==5.5.4 tokenizers==0.22.2 \
        safetensors==0.8.0 numpy==2.2.6 draccus==0.11.6 huggingface_hub==1.33.0 \
        einops==0.8.2 gymnasium==1.4.0 opencv-python-headless==4.13.0.92 \
        pillow==13.0.0 termcolor==3.3.0 packaging==25.0 scipy==1.18.1 sentencepiece==0.2.3

(transformers / scipy are LeRobot's ``[pi]`` extra; ``--no-deps`` for lerobot because
its metadata pins an older torch.)

Run from the repository root::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv-peer/bin/python \
        test/peer/make_lerobot_pi05_fixture.py --out test/data/lerobot_pi05_tiny
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv-peer/bin/python \
        test/peer/make_lerobot_pi05_fixture.py --variant b --out test/data/lerobot_pi05_tiny_b

Deterministic: all randomness comes from fixed seeds; re-running rewrites ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

SEED = 20250605
ALOHA_ARM = ["waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper"]


# --------------------------------------------------------------------------- variants
@dataclass
class Gemma:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


@dataclass
class Variant:
    name: str
    vlm: Gemma
    expert: Gemma
    siglip_hidden: int
    siglip_layers: int
    siglip_heads: int
    siglip_mlp: int
    patch: int
    image: int
    chunk: int
    tokenizer_max_length: int
    cameras: dict[str, tuple[int, int]]  # key -> raw (H, W)
    empty_cameras: int
    dim_names: list[str]  # state and action joint names (same dim)
    state_norm: str  # NormalizationMode name
    action_norm: str
    tasks: list[str] = field(default_factory=list)
    max_dim: int = 32
    num_steps: int = 10


VARIANTS = {
    "a": Variant(
        name="a",
        vlm=Gemma(64, 2, 128, 8, 1, 16),
        expert=Gemma(32, 2, 64, 8, 1, 16),
        siglip_hidden=32, siglip_layers=2, siglip_heads=2, siglip_mlp=64, patch=14, image=56,
        chunk=10, tokenizer_max_length=48,
        cameras={"observation.images.cam_high": (48, 64), "observation.images.cam_left_wrist": (56, 56)},
        empty_cameras=1,
        dim_names=[f"{side}_{j}" for side in ("left", "right") for j in ALOHA_ARM],
        state_norm="QUANTILES", action_norm="QUANTILES",
        tasks=["  transfer_the cube\n", "insert the peg into the socket"],
    ),
    "b": Variant(
        name="b",
        vlm=Gemma(48, 3, 96, 8, 1, 8),
        expert=Gemma(24, 3, 48, 8, 1, 8),
        siglip_hidden=24, siglip_layers=3, siglip_heads=3, siglip_mlp=40, patch=14, image=42,
        chunk=8, tokenizer_max_length=40,
        cameras={"observation.images.top": (40, 60)},
        empty_cameras=0,
        dim_names=["waist", "shoulder", "elbow", "wrist_angle", "wrist_rotate", "gripper"],
        state_norm="MEAN_STD", action_norm="QUANTILES",
        tasks=["pick_up the red block\n", "  open the drawer  "],
    ),
}

# Words of the stand-in vocabulary (lower case; the tokenizer lower-cases its input).
WORDS = [
    "task", "state", "action",
    "transfer", "the", "cube", "insert", "peg", "into", "socket",
    "pick", "up", "red", "block", "open", "drawer", "close", "put", "on", "a", "to",
    "and", "in", "of", "left", "right", "arm", "gripper",
]
PUNCT = [":", ",", ";", "-", "."]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]


# --------------------------------------------------------------------------- helpers
def build_tokenizer(max_length: int):
    """WordLevel stand-in for the PaliGemma tokenizer (tokenizers.Tokenizer)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab_list = SPECIALS + PUNCT + WORDS + [str(i) for i in range(256)]
    assert len(set(vocab_list)) == len(vocab_list)
    vocab = {w: i for i, w in enumerate(vocab_list)}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok.add_special_tokens(SPECIALS)  # keeps their ids (already in the vocab)
    tok.enable_truncation(max_length=max_length)
    tok.enable_padding(direction="right", pad_id=0, pad_token="<pad>", length=max_length)
    return tok, len(vocab_list)


def synthetic_stats(v: Variant, gen: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Realistic-looking per-dimension dataset stats (joint rad ~ +-1.5, gripper in [0,1])."""

    def one(offset: float) -> dict[str, torch.Tensor]:
        d = len(v.dim_names)
        u = torch.rand(5, d, generator=gen, dtype=torch.float64)
        q01 = torch.empty(d, dtype=torch.float64)
        q99 = torch.empty(d, dtype=torch.float64)
        mn = torch.empty(d, dtype=torch.float64)
        mx = torch.empty(d, dtype=torch.float64)
        for i, name in enumerate(v.dim_names):
            if name.endswith("gripper"):
                q01[i] = 0.01 + 0.05 * u[0, i]
                q99[i] = 0.90 + 0.08 * u[1, i]
                mn[i], mx[i] = 0.0, 1.0
            else:
                half = 0.6 + 0.9 * u[0, i]  # 0.6 .. 1.5 rad
                centre = (u[1, i] - 0.5) * 0.6 + offset
                q01[i] = centre - half
                q99[i] = centre + half
                mn[i] = q01[i] - 0.05 - 0.2 * u[2, i]
                mx[i] = q99[i] + 0.05 + 0.2 * u[3, i]
        mean = q01 + (q99 - q01) * (0.4 + 0.2 * u[4])
        std = (q99 - q01) / (4.0 + u[2])
        out = {"mean": mean, "std": std, "min": mn, "max": mx, "q01": q01, "q99": q99}
        return {k: t.to(torch.float32) for k, t in out.items()}

    return {"observation.state": one(0.0), "action": one(0.05)}


def redraw_parameters(model: torch.nn.Module, gen: torch.Generator) -> dict[str, str]:
    """Redraw EVERY parameter from `gen`; returns a name -> rule map (for reference.json)."""
    rules: dict[str, str] = {}

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    for name, p in model.named_parameters():  # tied parameters appear once
        shape = tuple(p.shape)
        if name.endswith("lm_head.weight"):
            new, rule = normal(shape, 0.02), "N(0,0.02) (unused)"
        elif name.endswith("embed_tokens.weight"):
            std = 1.0 / math.sqrt(shape[1])
            new, rule = normal(shape, std), "N(0,1/sqrt(width))"
        elif name.endswith("position_embedding.weight"):
            new, rule = normal(shape, 0.2), "N(0,0.2)"
        elif ".dense.weight" in name:  # adaRMS modulation Linear(d -> 3d)
            new, rule = normal(shape, 1.0 / math.sqrt(shape[1])), "N(0,1/sqrt(fan_in))"
        elif ".dense.bias" in name:  # (scale, shift, gate): gate centred on 1
            new = normal(shape, 0.2)
            third = shape[0] // 3
            new[2 * third :] += 1.0
            rule = "N(0,0.2), gate third +1"
        elif p.dim() >= 2:
            fan_in = int(np.prod(shape[1:]))
            new, rule = normal(shape, 1.0 / math.sqrt(fan_in)), "N(0,1/sqrt(fan_in))"
        elif ("layer_norm" in name or "layernorm" in name) and "vision_tower" in name:
            if name.endswith(".weight"):  # nn.LayerNorm weight (multiplicative, around 1)
                new, rule = normal(shape, 0.1, 1.0), "1+N(0,0.1)"
            else:
                new, rule = normal(shape, 0.05), "N(0,0.05)"
        elif name.endswith("norm.weight"):  # Gemma RMSNorm: x*(1+w)
            new, rule = normal(shape, 0.1), "N(0,0.1) (used as 1+w)"
        elif name.endswith(".bias"):
            new, rule = normal(shape, 0.05), "N(0,0.05)"
        else:
            raise RuntimeError(f"no redraw rule for parameter {name} {shape}")
        with torch.no_grad():
            p.copy_(new)
        rules[name] = rule
    return rules


def collapse(key: str) -> str:
    return re.sub(r"\.(\d+)\.", ".N.", key)


# --------------------------------------------------------------------------- LeRobot patches
@contextlib.contextmanager
def lerobot_tiny_patches(v: Variant, standin_tokenizer=None):
    """Patch the three module-level names in modeling_pi05 (and AutoTokenizer) for construction."""
    from transformers import PaliGemmaConfig

    import lerobot.policies.pi05.modeling_pi05 as m
    import lerobot.processor.tokenizer_processor as tp

    orig_get, orig_map, orig_cls, orig_auto = (
        m.get_gemma_config, m.CONFIG_MAPPING, m.PaliGemmaForConditionalGenerationWithPiGemma, tp.AutoTokenizer)

    def get_gemma_config(variant: str):
        g = {"gemma_2b": v.vlm, "gemma_300m": v.expert}[variant]
        return m.GemmaConfig(g.width, g.depth, g.mlp_dim, g.num_heads, g.num_kv_heads, g.head_dim)

    def tiny_paligemma_config(**kw):
        return PaliGemmaConfig(
            vision_config={
                "model_type": "siglip_vision_model", "hidden_size": v.siglip_hidden,
                "num_hidden_layers": v.siglip_layers, "num_attention_heads": v.siglip_heads,
                "intermediate_size": v.siglip_mlp, "patch_size": v.patch, "image_size": v.image,
                "vocab_size": 257152, "vision_use_head": False,
            },
            projection_dim=v.vlm.width, hidden_size=v.vlm.width, **kw,
        )

    class ConfigMapping:
        def __getitem__(self, key):
            return tiny_paligemma_config if key == "paligemma" else orig_map[key]

    class TinyPaliGemma(orig_cls):
        def __init__(self, config):
            # LeRobot hard-sets these to 4304 / 2048 just before constructing.
            config.vision_config.intermediate_size = v.siglip_mlp
            config.vision_config.projection_dim = v.vlm.width
            config.projection_dim = v.vlm.width
            config.hidden_size = v.vlm.width
            super().__init__(config)

    class AutoTokenizerStandIn:
        @staticmethod
        def from_pretrained(name, *a, **k):
            assert name == "google/paligemma-3b-pt-224", name
            assert standin_tokenizer is not None
            return standin_tokenizer

    m.get_gemma_config = get_gemma_config
    m.CONFIG_MAPPING = ConfigMapping()
    m.PaliGemmaForConditionalGenerationWithPiGemma = TinyPaliGemma
    tp.AutoTokenizer = AutoTokenizerStandIn
    try:
        yield
    finally:
        m.get_gemma_config = orig_get
        m.CONFIG_MAPPING = orig_map
        m.PaliGemmaForConditionalGenerationWithPiGemma = orig_cls
        tp.AutoTokenizer = orig_auto


def make_config(v: Variant):
    from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.policies.pi05.configuration_pi05 import PI05Config

    d = len(v.dim_names)
    input_features = {k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, h, w)) for k, (h, w) in v.cameras.items()}
    input_features["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(d,))
    output_features = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(d,))}
    return PI05Config(
        dtype="float32", device="cpu",
        chunk_size=v.chunk, n_action_steps=v.chunk,
        max_state_dim=v.max_dim, max_action_dim=v.max_dim, num_inference_steps=v.num_steps,
        image_resolution=(v.image, v.image), empty_cameras=v.empty_cameras,
        tokenizer_max_length=v.tokenizer_max_length,
        input_features=input_features, output_features=output_features,
        normalization_mapping={
            "VISUAL": NormalizationMode.IDENTITY,
            "STATE": NormalizationMode[v.state_norm],
            "ACTION": NormalizationMode[v.action_norm],
        },
        push_to_hub=False,
    )


def build_policy(v: Variant, config):
    from lerobot.policies.pi05.modeling_pi05 import PI05Policy

    with lerobot_tiny_patches(v):
        policy = PI05Policy(copy.deepcopy(config))
    policy.eval()
    return policy


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--variant", default="a", choices=sorted(VARIANTS))
    args = ap.parse_args()
    v = VARIANTS[args.variant]
    command = "HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv-peer/bin/python " + " ".join(
        ["test/peer/make_lerobot_pi05_fixture.py"] + sys.argv[1:])

    torch.manual_seed(SEED)  # nothing should draw from it, but be safe
    torch.use_deterministic_algorithms(True)
    from importlib.metadata import version

    import transformers
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from lerobot.policies.common.vla_utils import pad_vector
    from lerobot.policies.pi05.modeling_pi05 import PI05Policy
    from lerobot.policies.pi05.processor_pi05 import make_pi05_pre_post_processors

    out: Path = args.out
    if out.exists():
        if any(out.iterdir()) and not (out / "reference.json").exists():
            sys.exit(f"refusing to overwrite non-fixture directory {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True)

    g_w = torch.Generator().manual_seed(SEED + 1)  # weights
    g_s = torch.Generator().manual_seed(SEED + 2)  # stats
    g_i = torch.Generator().manual_seed(SEED + 3)  # inputs
    g_t = torch.Generator().manual_seed(SEED + 4)  # training batch
    d, B, D, T = len(v.dim_names), 2, v.max_dim, v.chunk

    # ---------------- tokenizer stand-in
    tok, V = build_tokenizer(v.tokenizer_max_length)
    tok.save(str(out / "tokenizer.json"))
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tok.to_str()),
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
    )

    # ---------------- config, policy, weights, processors
    config = make_config(v)
    policy = build_policy(v, config)
    config = policy.config  # validate_features() added the empty cameras
    rules = redraw_parameters(policy, g_w)
    stats = synthetic_stats(v, g_s)
    with lerobot_tiny_patches(v, standin_tokenizer=hf_tok):
        preprocessor, postprocessor = make_pi05_pre_post_processors(config, dataset_stats=stats)

    n_params = sum(p.numel() for p in policy.parameters())
    pwe = policy.model.paligemma_with_expert
    lm_tied = pwe.paligemma.lm_head.weight is pwe.paligemma.model.language_model.embed_tokens.weight

    # ---------------- raw inputs
    raw_images = {}
    for key, (h, w) in v.cameras.items():
        raw_images[key] = torch.randint(0, 256, (B, h, w, 3), generator=g_i, dtype=torch.uint8)
    st = stats["observation.state"]
    # raw values that normalize to -1 / +1 under the state normalization mode
    if v.state_norm == "QUANTILES":
        lo, hi = st["q01"], st["q99"]
    else:  # MEAN_STD
        lo, hi = st["mean"] - st["std"], st["mean"] + st["std"]
    u = torch.rand(B, d, generator=g_i)
    raw_state = (lo + (hi - lo) * (0.05 + 0.9 * u)).to(torch.float32)
    lo_dim, hi_dim = 2, d - 3
    raw_state[1, lo_dim] = lo[lo_dim] - 0.05 * (hi - lo)[lo_dim]  # normalizes to -1.1 -> bin -1
    raw_state[1, hi_dim] = hi[hi_dim] + 0.05 * (hi - lo)[hi_dim]  # normalizes to +1.1 -> bin 255
    noise = torch.randn(B, T, D, generator=g_i)

    def lerobot_batch(with_action=None):
        b = {k: img.permute(0, 3, 1, 2).to(torch.float32) / 255.0 for k, img in raw_images.items()}
        b["observation.state"] = raw_state.clone()
        b["task"] = list(v.tasks)
        if with_action is not None:
            b["action"] = with_action.clone()
        return b

    # ---------------- LeRobot pipeline (inference)
    pre = preprocessor(lerobot_batch())
    prompts = None
    # re-derive the prompts exactly as Pi05PrepareStateTokenizerProcessorStep does, by running it
    from lerobot.processor.converters import batch_to_transition
    from lerobot.lerobot_types import TransitionKey

    tr = batch_to_transition(lerobot_batch())
    for step in preprocessor.steps:
        tr = step(tr)
        if type(step).__name__ == "Pi05PrepareStateTokenizerProcessorStep":
            prompts = list(tr[TransitionKey.COMPLEMENTARY_DATA]["task"])
            state_normalized = tr[TransitionKey.OBSERVATION]["observation.state"].clone()
            break
    assert prompts is not None
    tokens = pre["observation.language.tokens"]
    masks = pre["observation.language.attention_mask"]
    assert torch.equal(pre["observation.state"], state_normalized)
    disc = np.digitize(state_normalized.numpy(), bins=np.linspace(-1, 1, 256 + 1)[:-1]) - 1
    for i, prompt in enumerate(prompts):
        clean = v.tasks[i].strip().replace("_", " ").replace("\n", " ")
        assert prompt == f"Task: {clean}, State: {' '.join(map(str, disc[i]))};\nAction: ", prompt

    # the stand-in tokenizer.json alone must reproduce LeRobot's tokens
    tok_file = Tokenizer.from_file(str(out / "tokenizer.json"))
    for i, prompt in enumerate(prompts):
        enc = tok_file.encode(prompt)
        assert enc.ids == tokens[i].tolist(), (enc.ids, tokens[i].tolist())
        assert enc.attention_mask == masks[i].to(torch.int64).tolist()
        assert "<unk>" not in enc.tokens, enc.tokens
        assert int(masks[i].sum()) < v.tokenizer_max_length  # no truncation
    assert int(tokens.max()) < V

    with torch.no_grad():
        images, img_masks = policy._preprocess_images(pre)
        prefix_embs, prefix_pad, prefix_att = policy.model.embed_prefix(images, img_masks, tokens, masks)
        actions_model = policy.model.sample_actions(images, img_masks, tokens, masks, noise=noise.clone())
        actions_policy = policy.predict_action_chunk(pre, noise=noise.clone())
        actions_unnorm = postprocessor(actions_policy.clone())
    assert torch.equal(actions_policy, actions_model[..., :d])
    attn = {
        "vlm": pwe.paligemma.model.language_model.config._attn_implementation,
        "expert": pwe.gemma_expert.model.config._attn_implementation,
        "vision": pwe.paligemma.model.vision_tower.config._attn_implementation,
    }

    # ---------------- training forward of one fixed batch
    a_st = stats["action"]
    train_raw = (a_st["q01"] + (a_st["q99"] - a_st["q01"]) * torch.rand(B, T, d, generator=g_t)).to(torch.float32)
    train_noise = torch.randn(B, T, D, generator=g_t)
    train_time = torch.tensor([0.3, 0.85], dtype=torch.float32)
    pre_t = preprocessor(lerobot_batch(with_action=train_raw))
    assert torch.equal(pre_t["observation.language.tokens"], tokens)
    train_norm = pre_t["action"]
    with torch.no_grad():
        imgs_t, imasks_t = policy._preprocess_images(pre_t)
        losses = policy.model.forward(imgs_t, imasks_t, tokens, masks, pad_vector(train_norm, D),
                                      train_noise.clone(), train_time.clone())
        loss = losses[:, :, :d].mean()
        # PI05Policy.forward with its noise/time sampler pinned gives the same loss
        pm = policy.model
        pm.sample_noise = lambda shape, device: train_noise.clone()
        pm.sample_time = lambda bsize, device: train_time.clone()
        loss_policy, _ = policy.forward(pre_t)
        del pm.sample_noise, pm.sample_time
    assert torch.equal(loss_policy, loss), (loss_policy, loss)

    # ---------------- save the policy + processors exactly as LeRobot writes them
    full_sd = {k: t.detach().clone() for k, t in policy.state_dict().items()}
    policy.save_pretrained(out)
    preprocessor.save_pretrained(out)
    postprocessor.save_pretrained(out)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        st_meta = f.metadata()
    saved = load_file(str(out / "model.safetensors"))
    embed_key = "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    dropped = sorted(k for k in saved if k.endswith("lm_head.weight"))
    trimmed = {k: t for k, t in saved.items() if k not in dropped}
    full_embed_shape = list(trimmed[embed_key].shape)
    trimmed[embed_key] = trimmed[embed_key][:V].clone().contiguous()
    untrimmed_dir = Path(tempfile.mkdtemp(prefix="pi05_untrimmed_"))
    shutil.copy(out / "model.safetensors", untrimmed_dir / "model.safetensors")
    shutil.copy(out / "config.json", untrimmed_dir / "config.json")
    save_file(trimmed, str(out / "model.safetensors"), metadata=st_meta)

    # ---------------- verification 1: LeRobot's own from_pretrained on the UNtrimmed checkpoint
    with lerobot_tiny_patches(v):
        with contextlib.redirect_stdout(sys.stderr):
            reloaded = PI05Policy.from_pretrained(untrimmed_dir, local_files_only=True, strict=True)
    reloaded.eval()
    rsd = reloaded.state_dict()
    assert set(rsd) == set(full_sd) and all(torch.equal(rsd[k], full_sd[k]) for k in full_sd)
    with torch.no_grad():
        a2 = reloaded.model.sample_actions(images, img_masks, tokens, masks, noise=noise.clone())
    assert torch.equal(a2, actions_model), (a2 - actions_model).abs().max()
    shutil.rmtree(untrimmed_dir)
    del reloaded

    # ---------------- verification 2: the TRIMMED checkpoint suffices (unused rows / lm_heads = NaN)
    fresh = build_policy(v, config)
    trimmed_back = load_file(str(out / "model.safetensors"))
    with torch.no_grad():
        for k, p in fresh.state_dict().items():
            if k in dropped:
                p.fill_(float("nan"))
            elif k == embed_key:
                p.fill_(float("nan"))
                p[:V].copy_(trimmed_back[k])
            else:
                p.copy_(trimmed_back[k])
        a3 = fresh.model.sample_actions(images, img_masks, tokens, masks, noise=noise.clone())
        l3 = fresh.model.forward(imgs_t, imasks_t, tokens, masks, pad_vector(train_norm, D),
                                 train_noise.clone(), train_time.clone())
    assert torch.equal(a3, actions_model) and torch.equal(l3, losses)
    del fresh

    # ---------------- reference tensors
    ref: dict[str, torch.Tensor] = {}
    desc: dict[str, str] = {}

    def put(name, t, text):
        ref[name] = t.detach().contiguous()
        desc[name] = f"{list(t.shape)} {str(t.dtype).replace('torch.', '')}: {text}"

    cam_keys = list(config.image_features)
    short = {k: k.removeprefix("observation.images.") for k in v.cameras}
    for k, img in raw_images.items():
        put(f"raw.images.{short[k]}", img, f"raw camera `{k}`, HWC RGB uint8; LeRobot input is "
            "permute(0,3,1,2).float()/255 as a dataset gives it")
    put("raw.state", raw_state, "raw `observation.state` (joint units); sample 1 has dim "
        f"{lo_dim} normalizing to -1.1 (bin -1) and dim {hi_dim} to +1.1 (bin 255)")
    put("noise", noise, "flow-matching start noise x_1 for sample_actions / predict_action_chunk")
    put("pre.state_normalized", state_normalized, f"state after LeRobot's normalizer ({v.state_norm})")
    put("pre.state_discretized", torch.from_numpy(disc.astype(np.int64)),
        "np.digitize(state_normalized, linspace(-1,1,257)[:-1]) - 1 (what the prompt prints)")
    put("pre.tokens", tokens, "observation.language.tokens from LeRobot's TokenizerProcessorStep")
    put("pre.masks", masks, "observation.language.attention_mask")
    for i, (img, m_) in enumerate(zip(images, img_masks, strict=True)):
        put(f"pre.images.{i}", img, f"PI05Policy._preprocess_images image {i} ({cam_keys[i]}), [-1,1]")
        put(f"pre.img_masks.{i}", m_, f"image mask {i} ({cam_keys[i]})")
    put("prefix.embs", prefix_embs, "PI05Pytorch.embed_prefix embeddings [images..., language]")
    put("prefix.pad_masks", prefix_pad, "PI05Pytorch.embed_prefix pad masks")
    put("out.actions_model", actions_model, "PI05Pytorch.sample_actions(images, img_masks, tokens, masks, noise)")
    put("out.actions_policy", actions_policy, "PI05Policy.predict_action_chunk(preprocessed batch, noise=noise)"
        " == out.actions_model[..., :action_dim]")
    put("out.actions_unnormalized", actions_unnorm, "postprocessor(out.actions_policy): joint-unit actions")
    put("train.actions_raw", train_raw, "training action chunk, raw units")
    put("train.actions_normalized", train_norm, f"preprocessor output `action` ({v.action_norm})")
    put("train.noise", train_noise, "training noise")
    put("train.time", train_time, "training flow time t (1 = noise)")
    put("train.losses", losses, "PI05Pytorch.forward(images, img_masks, tokens, masks, "
        "pad_vector(actions_normalized, 32), noise, time), elementwise (u - v)^2")
    put("train.loss", loss.reshape(()), "train.losses[:, :, :action_dim].mean() == PI05Policy.forward loss")
    for k, s in stats.items():
        for sk, t in s.items():
            put(f"stats.{k}.{sk}", t, f"dataset stats given to make_pi05_pre_post_processors ({k} {sk})")
    save_file(ref, str(out / "reference.safetensors"), metadata={"generator": "test/peer/make_lerobot_pi05_fixture.py"})

    keys_saved = sorted(trimmed)
    meta = {
        "what": "LeRobot PI05Policy peer-equivalence fixture (tiny, random weights, stand-in tokenizer)",
        "command": command,
        "variant": v.name,
        "versions": {"lerobot": version("lerobot"), "transformers": transformers.__version__,
                     "torch": torch.__version__, "tokenizers": version("tokenizers"),
                     "numpy": np.__version__, "safetensors": version("safetensors")},
        "seeds": {"base": SEED, "weights": SEED + 1, "stats": SEED + 2, "inputs": SEED + 3, "train": SEED + 4,
                  "note": "each a torch.Generator().manual_seed(); draw order as in the script"},
        "sizes": {
            "vlm": vars(v.vlm), "expert": vars(v.expert),
            "siglip": {"hidden": v.siglip_hidden, "layers": v.siglip_layers, "heads": v.siglip_heads,
                       "mlp": v.siglip_mlp, "patch": v.patch, "image": v.image,
                       "tokens_per_camera": (v.image // v.patch) ** 2},
            "chunk_size": v.chunk, "n_action_steps": v.chunk, "max_state_dim": v.max_dim,
            "max_action_dim": v.max_dim, "num_inference_steps": v.num_steps,
            "tokenizer_max_length": v.tokenizer_max_length, "state_dim": d, "action_dim": d,
            "batch": B, "dtype": "float32", "n_parameters_full": n_params,
        },
        "normalization": {"VISUAL": "IDENTITY", "STATE": v.state_norm, "ACTION": v.action_norm},
        "joint_names": v.dim_names,
        "cameras_raw_hw": {k: list(hw) for k, hw in v.cameras.items()},
        "camera_order": cam_keys,
        "empty_cameras": v.empty_cameras,
        "tasks": v.tasks,
        "prompts": prompts,
        "tokenizer": {
            "file": "tokenizer.json",
            "kind": "stand-in WordLevel (Lowercase normalizer, Whitespace pre-tokenizer, '<bos> $A' template,"
                    " right padding with id 0 and truncation to tokenizer_max_length)",
            "vocab_size": V, "pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3,
            "note": "policy_preprocessor.json still names google/paligemma-3b-pt-224 (LeRobot writes the name "
                    "it was built with); the stand-in was substituted for AutoTokenizer.from_pretrained",
        },
        "vocab_trim": {
            "V": V, "trimmed": {embed_key: {"saved_shape": [V, full_embed_shape[1]], "full_shape": full_embed_shape}},
            "dropped": dropped, "lm_head_tied_to_embed_tokens_in_module": lm_tied,
            "note": "all other tensors unchanged; token ids used are < V. Verified: the trimmed checkpoint with the "
                    "rest of embed_tokens and the lm_heads set to NaN reproduces every output bit-exactly",
        },
        "attention_implementation": attn,
        "notes": [
            "images: present cameras in config.image_features order, then missing ones (the empty cameras, "
            "appended to input_features by PI05Config.validate_features) as all -1 images with mask False",
            "resize_with_pad_torch: ratio=max(W/w,H/h), size int(H/ratio) x int(W/ratio), bilinear "
            "align_corners=False, clamp [0,1], zero padding centred (extra row/col at bottom/right), then x*2-1",
            "state bins: np.digitize(s, linspace(-1,1,257)[:-1]) - 1, so s < -1 -> -1 and s >= 1-1/128 -> 255",
            "prompt: f'Task: {task.strip() with _ and newline -> space}, State: {bins};\\nAction: '; the "
            "tokenizer step uses the tokenizer's own special tokens (here '<bos>' first), right padding, truncation",
            "sample_actions forces eager attention on both Gemmas; the training path calls eager_attention_forward "
            "directly; the SigLIP tower keeps transformers' default (sdpa)",
        ],
        "weights_redraw_rules": sorted({collapse(k): r for k, r in rules.items()}.items()),
        "model_safetensors_keys": {"count": len(keys_saved),
                                   "patterns": sorted({collapse(k) for k in keys_saved})},
        "tensors": desc,
        "checks": [
            "tokenizers.Tokenizer.from_file('tokenizer.json').encode(prompt).ids == pre.tokens[i]",
            "out.actions_policy == out.actions_model[..., :action_dim] (bit-exact)",
            "PI05Policy.forward(batch) with noise/time pinned == train.loss (bit-exact)",
            "PI05Policy.from_pretrained(untrimmed checkpoint) reproduces out.actions_model bit-exactly",
            "trimmed checkpoint (+NaN elsewhere) reproduces out.actions_model and train.losses bit-exactly",
        ],
    }
    (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")

    for f in out.iterdir():
        f.chmod(0o644)  # some LeRobot/safetensors writers create 0600 files
    total = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out} ({total / 1e6:.2f} MB): V={V}, params(full)={n_params}, "
          f"actions |max|={actions_unnorm.abs().max():.3f}, loss={loss.item():.5f}, attn={attn}")


if __name__ == "__main__":
    main()

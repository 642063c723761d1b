"""Reference fixture for GR00T N1.5, made by the stock reference code (LeRobot 0.5.1's port of
Isaac-GR00T N1.5: `lerobot/policies/groot/`), offline, at a tiny size.

What it writes
  test/data/gr00t_n15_tiny/
    model.safetensors      the tiny N1.5's weights, stock key names (`backbone.eagle_model...`,
                           `action_head...`), seeded random values (every parameter O(1)
                           relevant, not the stock 0.02 init). Two edits, both recorded in
                           reference.json: `...language_model.model.embed_tokens.weight` holds only
                           the rows of the token ids the fixture uses (row i = id
                           `embed_row_ids[i]` of reference.safetensors; the model itself has the
                           real Qwen3 vocabulary, 151680 rows), and the tied
                           `...language_model.lm_head.weight` is not stored (it *is* embed_tokens).
    eagle_config.json      the Eagle 2.5 VL config the backbone was built from (tiny sizes, stock
                           layout of the N1.5 Eagle: SigLIP + Qwen3, no pixel shuffle, 1-layer mlp1)
    config.json            GR00T_N1_5 config (backbone_cfg, action_head_cfg) of the tiny model
    reference.safetensors  inputs, drawn noise / flow times, intermediates, actions, loss
    reference.json         what every tensor is, and how it was produced
  test/data/gr00t_n15_keys.json (with --keys): state_dict keys and shapes of GR00T N1.5 at the
    published size (nvidia/GR00T-N1.5-3B), built on the meta device by the same stock code.

Why
  The reference can be built offline: LeRobot 0.5.1 vendors the Eagle 2.5 VL model code
  (`policies/groot/eagle2_hg_model/`); only the Eagle config.json and tokenizer files come from
  the hub (`lerobot/eagle2hg-processor-groot-n1p5`). This script writes that config.json itself
  (tiny sizes) into a scratch directory and passes the directory as `tokenizer_assets_repo`
  (the stock code copies the vendored .py files there and loads them with
  trust_remote_code; its hub download of tokenizer files fails and is caught — no tokenizer is
  used: token ids are given directly). Patches, all outside the model code:
    * `lerobot.policies` / `lerobot.policies.groot` are registered as bare packages, so their
      `__init__`s (the whole LeRobot policy / processor stack) are not imported;
    * transformers' `SiglipVisionModel` is replaced, before the vendored Eagle module imports it,
      by a subclass whose only change is the attention backend ("eager"): the vendored
      `Eagle25VLForConditionalGeneration.__init__` hard-codes flash_attention_2, which needs CUDA;
    * for the meta-device build, torch.distributions argument validation is off (the action
      head builds a Beta distribution, whose validation calls .item()).

How (venv; the ref code needs transformers 5.3.0 = LeRobot 0.5.1's pin, diffusers, peft, dm-tree)
  ~/.pyenv/versions/3.12.1/bin/python -m venv .venv-peer-groot
  .venv-peer-groot/bin/pip install torch==2.13.0
  .venv-peer-groot/bin/pip install --no-deps lerobot==0.5.1
  .venv-peer-groot/bin/pip install transformers==5.3.0 "diffusers>=0.27.2,<0.36" \\
      "peft>=0.18,<1.0" "dm-tree>=0.1.8,<1.0" draccus==0.10.0 "numpy>=2.0,<2.3" safetensors
  .venv-peer-groot/bin/python test/peer/make_gr00t_n15_fixture.py [--keys]
  (tested with diffusers 0.35.2, peft 0.21.2, dm-tree 0.1.10, huggingface_hub 1.33.0.)
"""
from __future__ import annotations

import argparse
import atexit
import importlib
import json
import os
import pathlib
import shutil
import sys
import tempfile
import types

SCRATCH = pathlib.Path(tempfile.mkdtemp(prefix="gr00t_n15_ref_"))
atexit.register(shutil.rmtree, SCRATCH, True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_MODULES_CACHE"] = str(SCRATCH / "modules")  # trust_remote_code copies land here
os.environ["HF_LEROBOT_HOME"] = str(SCRATCH / "lerobot_home")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
OUT = REPO / "test" / "data" / "gr00t_n15_tiny"
KEYS_OUT = REPO / "test" / "data" / "gr00t_n15_keys.json"
ATTN = "eager"

# ---------------------------------------------------------------------------------- configs
_AUTO_MAP = {"AutoConfig": "configuration_eagle2_5_vl.Eagle25VLConfig",
             "AutoModel": "modeling_eagle2_5_vl.Eagle25VLForConditionalGeneration"}


def eagle_config(tiny: bool) -> dict:
    """Eagle 2.5 VL config.json. Published: the N1.5 Eagle config vendored by Isaac-GR00T
    (n1.5 era; e.g. peri044/Isaac-GR00T gr00t/model/backbone/eagle2_hg_model/config.json)."""
    common = {"architectures": ["Eagle25VLForConditionalGeneration"], "auto_map": _AUTO_MAP,
              "model_type": "eagle_2_5_vl", "_attn_implementation": ATTN, "downsample_ratio": 0.5,
              "image_token_index": 151669, "mlp_connector_layers": 1, "use_pixel_shuffle": False,
              "select_layer": -1, "template": "qwen3-chat", "dynamic_image_size": True,
              "use_thumbnail": True, "min_dynamic_tiles": 1, "max_dynamic_tiles": 12}
    if tiny:
        text = dict(head_dim=16, hidden_size=64, intermediate_size=96, num_attention_heads=4,
                    num_key_value_heads=2, num_hidden_layers=4, max_position_embeddings=512)
        vision = dict(hidden_size=32, image_size=56, intermediate_size=48, num_attention_heads=2,
                      num_hidden_layers=2, patch_size=14)
        force = 56
    else:
        text = dict(head_dim=128, hidden_size=2048, intermediate_size=6144, num_attention_heads=16,
                    num_key_value_heads=8, num_hidden_layers=28, max_position_embeddings=40960)
        vision = dict(hidden_size=1152, image_size=224, intermediate_size=4304, num_attention_heads=16,
                      num_hidden_layers=27, patch_size=14)
        force = 224
    text.update(architectures=["Qwen3ForCausalLM"], model_type="qwen3", rms_norm_eps=1e-6,
                rope_theta=1000000, tie_word_embeddings=True, vocab_size=151680,
                attention_bias=False, attention_dropout=0.0, bos_token_id=151643, eos_token_id=151645)
    vision.update(model_type="siglip_vision_model", layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
                  num_channels=3, attention_dropout=0.0)
    return {**common, "force_image_size": force, "text_config": text, "vision_config": vision}


def groot_config(tiny: bool, assets: pathlib.Path) -> dict:
    """GR00T_N1_5 config.json (backbone_cfg, action_head_cfg). Published values: nvidia/GR00T-N1.5-3B
    config.json as quoted in public repositories (see gr00t_n15_keys.json `_meta`)."""
    if tiny:
        dit = dict(attention_head_dim=8, num_attention_heads=4, num_layers=4, output_dim=48,
                   cross_attention_dim=64)
        vlsa = dict(attention_head_dim=16, num_attention_heads=4, num_layers=2)
        head = dict(action_dim=8, action_horizon=6, backbone_embedding_dim=64, hidden_size=48,
                    input_embedding_dim=32, max_action_dim=8, max_state_dim=12,
                    num_target_vision_tokens=3, max_num_embodiments=3, max_seq_len=16)
        select_layer = 2
    else:
        dit = dict(attention_head_dim=48, num_attention_heads=32, num_layers=16, output_dim=1024,
                   cross_attention_dim=2048)
        vlsa = dict(attention_head_dim=64, num_attention_heads=32, num_layers=4)
        head = dict(action_dim=32, action_horizon=16, backbone_embedding_dim=2048, hidden_size=1024,
                    input_embedding_dim=1536, max_action_dim=32, max_state_dim=64,
                    num_target_vision_tokens=32, max_num_embodiments=32, max_seq_len=1024)
        select_layer = 12
    dit.update(dropout=0.2, final_dropout=True, interleave_self_attention=True, norm_type="ada_norm",
               positional_embeddings=None)
    vlsa.update(dropout=0.2, final_dropout=True, positional_embeddings=None)
    head.update(add_pos_embed=True, diffusion_model_cfg=dit, vl_self_attention_cfg=vlsa,
                model_dtype="float32", noise_beta_alpha=1.5, noise_beta_beta=1.0, noise_s=0.999,
                num_inference_timesteps=4, num_timestep_buckets=1000, tune_diffusion_model=True,
                tune_projector=True, use_vlln=True)
    backbone = dict(tune_llm=False, tune_visual=True, select_layer=select_layer, reproject_vision=False,
                    use_flash_attention=False, load_bf16=False, project_to_dim=None,
                    tokenizer_assets_repo=str(assets))
    return dict(model_type="gr00t_n1_5", backbone_cfg=backbone, action_head_cfg=head,
                action_horizon=head["action_horizon"], action_dim=head["action_dim"],
                compute_dtype="float32")


# ------------------------------------------------------------------------ reference import
def import_reference():
    import lerobot
    root = pathlib.Path(lerobot.__file__).parent
    for name, sub in (("lerobot.policies", "policies"), ("lerobot.policies.groot", "policies/groot")):
        if name not in sys.modules:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(root / sub)]
            sys.modules[name] = pkg
    groot_n1 = importlib.import_module("lerobot.policies.groot.groot_n1")
    import transformers.models.siglip.modeling_siglip as ms
    if not getattr(ms.SiglipVisionModel, "_fixture_patch", False):
        base = ms.SiglipVisionModel

        class SiglipVisionModel(base):  # same module, same weights; attention backend only
            _fixture_patch = True

            def __init__(self, config):
                config._attn_implementation = ATTN
                super().__init__(config)

        ms.SiglipVisionModel = SiglipVisionModel
    return groot_n1


def build(groot_n1, tiny: bool, device: str | None = None):
    assets = SCRATCH / ("eagle_tiny" if tiny else "eagle_full")
    assets.mkdir(parents=True, exist_ok=True)
    ecfg = eagle_config(tiny)
    (assets / "config.json").write_text(json.dumps(ecfg, indent=1))
    gcfg = groot_config(tiny, assets)
    cfg = groot_n1.GR00TN15Config(**{k: v for k, v in gcfg.items() if k != "model_type"})
    if device == "meta":
        torch.distributions.Distribution.set_default_validate_args(False)
        with torch.device("meta"):
            model = groot_n1.GR00TN15(cfg, local_model_path=str(assets))
    else:
        model = groot_n1.GR00TN15(cfg, local_model_path=str(assets))
    return model, ecfg, gcfg


# ---------------------------------------------------------------------------- tiny fixture
IMG_CONTEXT, IM_START, IM_END, NL, PAD = 151669, 151644, 151645, 198, 151643
USER, ASSISTANT = 872, 77091
IMG_START, IMG_END = 151670, 151671   # <img>, </img>: ids assumed (added tokens after 151669)
LT, GT, SPACE, DIGIT = 27, 29, 220, {1: 16, 2: 17}   # "<", ">", " ", "1", "2" (byte-level BPE)
IMAGE_WORD = 1805                       # "image": id synthetic
TEXT = {0: [58, 6, 29188, 705, 279, 23739, 6, 60],  # "['pick up the cube']" synthetic ids
        1: [58, 6, 3487, 2115, 6, 60]}              # "['open drawer']"      synthetic ids


def prompt_ids(sample: int, views: int, tokens_per_image: int) -> list[int]:
    """Token layout of the Eagle processor + Qwen3 chat template for one user turn:
    <|im_start|>user\\n <image 1><img><IMG_CONTEXT>*n</img> ... text <|im_end|>\\n<|im_start|>assistant\\n"""
    ids = [IM_START, USER, NL]
    for v in range(1, views + 1):
        ids += [LT, IMAGE_WORD, SPACE, DIGIT[v], GT, IMG_START] + [IMG_CONTEXT] * tokens_per_image + [IMG_END]
    ids += TEXT[sample] + [IM_END, NL, IM_START, ASSISTANT, NL]
    return ids


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Seeded O(1)-relevant values for every parameter (stock init is 0.02-scale)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            r = torch.randn(p.shape, generator=g)
            if leaf == "W":                                   # CategorySpecificLinear [E, in, out]
                v = r * p.shape[1] ** -0.5
            elif leaf == "b" or (p.ndim == 1 and "bias" in leaf):
                v = 0.1 * r
            elif p.ndim == 1:                                 # norm weights
                v = 1.0 + 0.1 * r
            elif "embed_tokens" in name or "position_embedding" in name or "future_tokens" in name \
                    or leaf == "probe":
                v = r
            else:                                             # Linear / conv / in_proj weights
                v = r * (p[0].numel()) ** -0.5
            p.copy_(v)


def make_fixture() -> None:
    groot_n1 = import_reference()
    torch.manual_seed(0)
    model, ecfg, gcfg = build(groot_n1, tiny=True)
    randomise(model, seed=1234)
    model.eval()
    ah, em = model.action_head, model.backbone.eagle_model
    hc = gcfg["action_head_cfg"]
    B, V, S = 2, 2, ecfg["vision_config"]["image_size"]
    n_img = (S // ecfg["vision_config"]["patch_size"]) ** 2
    H, A, SD, E = hc["action_horizon"], hc["action_dim"], hc["max_state_dim"], hc["max_num_embodiments"]

    # ---- inputs
    g = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (B, V, 3, S, S), dtype=torch.uint8, generator=g)
    pixel_values = ((images.float() / 255.0 - 0.5) / 0.5).reshape(B * V, 3, S, S)
    rows = [prompt_ids(b, V, n_img) for b in range(B)]
    L = max(map(len, rows))
    input_ids = torch.full((B, L), PAD, dtype=torch.long)
    attention_mask = torch.zeros(B, L, dtype=torch.long)
    for b, r in enumerate(rows):  # left padding, as the LeRobot processor sets it
        input_ids[b, L - len(r):] = torch.tensor(r)
        attention_mask[b, L - len(r):] = 1
    state = (torch.rand(B, 1, SD, generator=g) * 2 - 1)
    state[1, :, 9:] = 0.0                                    # sample 1: 9 real dims, zero-padded
    embodiment_id = torch.tensor([0, 2])
    action = torch.rand(B, H, A, generator=g) * 2 - 1
    action_mask = torch.ones(B, H, A)
    action_mask[1, :, 5:] = 0.0                              # sample 1: 5 real action dims
    action[1, :, 5:] = 0.0
    base = {"eagle_input_ids": input_ids, "eagle_attention_mask": attention_mask,
            "eagle_pixel_values": pixel_values,
            "eagle_image_sizes": torch.tensor([[S, S]] * (B * V)),
            "state": state, "embodiment_id": embodiment_id}

    # ---- hooks on stock modules
    rec: dict[str, list] = {}

    def keep(name, fn=lambda o: o):
        def hook(_m, _i, out):
            rec.setdefault(name, []).append(fn(out).detach().clone())
        return hook

    def keep_in(name):
        def hook(_m, args):
            rec.setdefault(name, []).append(tuple(a.detach().clone() for a in args))
        return hook

    lm = em.language_model.model
    hooks = [
        em.vision_model.register_forward_hook(keep("vision_last_hidden_state", lambda o: o.last_hidden_state)),
        em.mlp1.register_forward_hook(keep("vision_features")),
        lm.layers[-1].register_forward_hook(keep("llm_last_layer_out",
                                                 lambda o: o[0] if isinstance(o, tuple) else o)),
        model.backbone.register_forward_hook(keep("backbone_features", lambda o: o["backbone_features"])),
        ah.vlln.register_forward_hook(keep("vlln_out")),
        ah.vl_self_attention.register_forward_hook(keep("vl_features")),
        ah.state_encoder.register_forward_hook(keep("state_features")),
        ah.action_encoder.register_forward_pre_hook(keep_in("action_encoder_in")),
        ah.model.register_forward_hook(keep("dit_out")),
        ah.action_decoder.register_forward_hook(keep("decoder_out")),
    ]

    # ---- inference: get_action draws its initial noise with torch.randn after the backbone
    SEED_INF, SEED_LOSS = 100, 200
    with torch.no_grad():
        torch.manual_seed(SEED_INF)
        actions = model.get_action(dict(base))["action_pred"].clone()
    torch.manual_seed(SEED_INF)
    noise = torch.randn(B, H, A)
    inf = {k: v for k, v in rec.items()}
    rec.clear()
    x_steps = torch.stack([a[0] for a in inf["action_encoder_in"]])          # [N, B, H, A]
    t_disc_inf = torch.stack([a[1] for a in inf["action_encoder_in"]])       # [N, B]
    velocities = torch.stack([o[:, -H:] for o in inf["decoder_out"]])        # [N, B, H, A]
    N = hc["num_inference_timesteps"]
    assert torch.equal(x_steps[0], noise), "replayed noise differs from get_action's draw"
    recon = noise + sum(velocities[i] / N for i in range(N))
    assert torch.allclose(recon, actions, atol=1e-5), (recon - actions).abs().max()

    # ---- training loss (eval mode: dropout 0.2 of DiT / vl_self_attention off)
    with torch.no_grad():
        torch.manual_seed(SEED_LOSS)
        loss = model.forward({**base, "action": action, "action_mask": action_mask})["loss"].clone()
    torch.manual_seed(SEED_LOSS)
    loss_noise = torch.randn(B, H, A)
    loss_t = ah.sample_time(B, device="cpu", dtype=torch.float32)
    tr = {k: v for k, v in rec.items()}
    for h in hooks:
        h.remove()
    noisy, t_disc_loss, _ = tr["action_encoder_in"][0]
    assert torch.allclose(noisy, (1 - loss_t[:, None, None]) * loss_noise + loss_t[:, None, None] * action,
                          atol=1e-6), "replayed loss noise / t differ"
    assert torch.equal(t_disc_loss, (loss_t * 1000).long())
    loss_pred = tr["decoder_out"][0][:, -H:]
    velocity = action - loss_noise
    manual = ((loss_pred - velocity) ** 2 * action_mask).sum() / action_mask.sum()
    assert torch.allclose(manual, loss, atol=1e-6)
    assert torch.equal(tr["backbone_features"][0], inf["backbone_features"][0])
    # VL features = final-norm(output of the last kept layer) (hidden_states[-1] is normed)
    assert torch.allclose(lm.norm(inf["llm_last_layer_out"][0]), inf["backbone_features"][0], atol=1e-6)

    # ---- save
    OUT.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    emb_key = "backbone.eagle_model.language_model.model.embed_tokens.weight"
    head_key = "backbone.eagle_model.language_model.lm_head.weight"
    assert em.language_model.lm_head.weight is lm.embed_tokens.weight
    row_ids = torch.unique(input_ids)
    sd[emb_key] = sd[emb_key][row_ids].contiguous()
    del sd[head_key]
    save_file(sd, str(OUT / "model.safetensors"), metadata={"format": "pt"})
    (OUT / "eagle_config.json").write_text(json.dumps(ecfg, indent=1) + "\n")
    gsave = json.loads(json.dumps(gcfg))
    gsave["backbone_cfg"]["tokenizer_assets_repo"] = "lerobot/eagle2hg-processor-groot-n1p5 (eagle_config.json here)"
    (OUT / "config.json").write_text(json.dumps(gsave, indent=1) + "\n")

    ref = {
        "images_uint8": images, "pixel_values": pixel_values, "input_ids": input_ids,
        "attention_mask": attention_mask, "state": state, "embodiment_id": embodiment_id,
        "action": action, "action_mask": action_mask, "embed_row_ids": row_ids,
        "vision_last_hidden_state": inf["vision_last_hidden_state"][0],
        "vision_features": inf["vision_features"][0],
        "llm_last_layer_out": inf["llm_last_layer_out"][0],
        "backbone_features": inf["backbone_features"][0], "vlln_out": inf["vlln_out"][0],
        "vl_features": inf["vl_features"][0], "state_features": inf["state_features"][0],
        "inference.noise": noise, "inference.x_steps": x_steps, "inference.t_discretized": t_disc_inf,
        "inference.velocities": velocities, "inference.actions": actions,
        "loss.noise": loss_noise, "loss.t": loss_t, "loss.t_discretized": t_disc_loss,
        "loss.noisy_trajectory": noisy, "loss.pred_velocity": loss_pred, "loss.loss": loss.reshape(()),
    }
    save_file({k: v.contiguous() for k, v in ref.items()}, str(OUT / "reference.safetensors"))
    desc = {
        "made_by": "test/peer/make_gr00t_n15_fixture.py",
        "reference_code": "lerobot==0.5.1 lerobot/policies/groot (GR00TN15 = port of Isaac-GR00T N1.5 "
                          "gr00t/model/gr00t_n1.py GR00T_N1_5, EagleBackbone, FlowmatchingActionHead, DiT)",
        "versions": {"torch": torch.__version__, "transformers": importlib.import_module("transformers").__version__,
                     "diffusers": importlib.import_module("diffusers").__version__},
        "attention_backend": f"{ATTN} (SigLIP, Qwen3); diffusers AttnProcessor2_0 (SDPA) in the DiT",
        "dtype": "float32 everywhere; model.eval() for both inference and loss (dropout off)",
        "weights": "seeded random (randomise(seed=1234)); embed_tokens trimmed to rows embed_row_ids; "
                   "lm_head tied to embed_tokens, not stored",
        "caveats": [
            "N1.5 masks padding only inside the LLM; vl_self_attention and the DiT cross-attention see every "
            "position, pads included. Sample 1 (3 left pads) therefore depends on what the LLM leaves in its pad "
            "rows, which depends on the attention backend: with sdpa instead of eager the pad rows differ (~1.6) "
            "and sample 1's actions move by ~0.06, while sample 0 (no padding) agrees to 1e-6. Sample 1 run alone "
            "without padding gives actions ~0.1 away from the batched ones. Compare sample 0 exactly; use sample "
            "1 only to test pad handling with the same backend.",
            "LLM position ids are arange(L) including pads (transformers default when position_ids is None); "
            "RoPE is relative, so this equals cumsum(mask)-1 positions on real tokens.",
        ],
        "sizes": {"batch": B, "views_per_sample": V, "image_size": S, "patch": 14,
                  "tokens_per_image": n_img, "seq_len": L, "action_horizon": H, "action_dim": A,
                  "max_state_dim": SD, "num_embodiments": E, "llm_layers_kept": gcfg["backbone_cfg"]["select_layer"],
                  "dit_blocks": 4, "vl_self_attention_blocks": 2, "future_tokens": hc["num_target_vision_tokens"]},
        "inputs": {
            "images_uint8": "[B, V, 3, S, S] uint8, camera images (random)",
            "pixel_values": "[B*V, 3, S, S] float = (img/255 - 0.5)/0.5 (Eagle image processor: mean=std=0.5; "
                            "images are already at tile size so no resize); order sample-major, then view",
            "input_ids": "[B, L] left-padded (pad id 151643) Eagle/Qwen3 chat prompt: <|im_start|>user\\n, per view "
                         "'<image k>' <img> <IMG_CONTEXT>*tokens_per_image </img>, task text, <|im_end|>\\n"
                         "<|im_start|>assistant\\n. Real ids: 151644/151645/198/872/77091/151669 and byte-level "
                         "'<' 27, '>' 29, ' ' 220, '1' 16, '2' 17; ASSUMED <img>=151670 </img>=151671; SYNTHETIC "
                         "ids for the words ('image', task text). Vision features replace the IMG_CONTEXT rows.",
            "attention_mask": "[B, L] 1 = token (sample 1 has left padding)",
            "state": "[B, 1, max_state_dim] (sample 1: 9 real dims then zeros)",
            "embodiment_id": "[B] category index of the per-embodiment projectors (0 and 2)",
            "action": "[B, H, A] target actions for the loss (sample 1: 5 real dims then zeros)",
            "action_mask": "[B, H, A] loss mask (sample 1: first 5 dims)",
            "embed_row_ids": "token ids whose embedding rows model.safetensors keeps, in row order",
        },
        "intermediates": {
            "vision_last_hidden_state": "[B*V, n, Dv] SiglipVisionModel last_hidden_state (post_layernorm "
                                        "applied; Eagle select_layer=-1)",
            "vision_features": "[B*V, n, D] mlp1 (one Linear, no pixel shuffle) output, scattered into the "
                               "IMG_CONTEXT positions of the token embeddings",
            "llm_last_layer_out": "[B, L, D] output of the last kept Qwen3 layer (before the final norm)",
            "backbone_features": "[B, L, D] VL features = hidden_states[select_layer] = model.norm(last layer "
                                 "out) (final RMSNorm applied), ALL L positions incl. padding",
            "vlln_out": "[B, L, D] action_head.vlln(backbone_features)",
            "vl_features": "[B, L, D] action_head.vl_self_attention(vlln_out): the DiT's cross-attention "
                           "context (no attention mask anywhere: pads are attended)",
            "state_features": "[B, 1, d] state_encoder(state, embodiment_id) (same in both passes)",
        },
        "inference": {
            "how": f"torch.manual_seed({SEED_INF}); model.get_action(inputs). The head draws "
                   "torch.randn(B, H, A) after the backbone (no other RNG use in eval mode); the draw is "
                   "replayed with the same seed (inference.noise == inference.x_steps[0], asserted).",
            "inference.x_steps": "[N, B, H, A] x fed to the action encoder at step k (x_0 = noise)",
            "inference.t_discretized": "[N, B] int(k/N * 1000) = 0, 250, 500, 750",
            "inference.velocities": "[N, B, H, A] action_decoder(DiT(...))[:, -H:] at step k",
            "inference.actions": "[B, H, A] x_N = x_0 + sum_k v_k / N (asserted)",
        },
        "loss": {
            "how": f"torch.manual_seed({SEED_LOSS}); model.forward(inputs + action + action_mask) in eval mode. "
                   "Draws: noise = torch.randn(B, H, A), then t = (0.999 - Beta(1.5, 1).sample([B])) / 0.999; "
                   "replayed with the same seed and checked against the action encoder's input.",
            "loss.noisy_trajectory": "(1 - t) * noise + t * action",
            "loss.t_discretized": "(t * 1000).long()",
            "loss.pred_velocity": "[B, H, A] decoder output on the action tokens",
            "loss.loss": "sum(((pred - (action - noise))**2) * action_mask) / sum(action_mask)",
        },
    }
    (OUT / "reference.json").write_text(json.dumps(desc, indent=1) + "\n")
    for f in OUT.iterdir():
        f.chmod(0o644)
    total = sum(f.stat().st_size for f in OUT.iterdir())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB); loss={loss.item():.6f}")


# --------------------------------------------------------------------------------- key list
def make_keys() -> None:
    groot_n1 = import_reference()
    model, ecfg, gcfg = build(groot_n1, tiny=False, device="meta")
    sd = model.state_dict()
    lm_head = "backbone.eagle_model.language_model.lm_head.weight"
    keys = {k: list(v.shape) for k, v in sd.items()}
    stored = {k: s for k, s in keys.items() if k != lm_head}
    n_params = sum(torch.Size(s).numel() for s in stored.values())
    meta = {
        "what": "state_dict keys and shapes of GR00T N1.5 at the published size (nvidia/GR00T-N1.5-3B), "
                "as the stock reference code builds it (meta device). `keys` = what the published "
                "model.safetensors(.index.json) holds; `tied_not_stored` = in the module's state_dict but "
                "not in the files (tied to embed_tokens).",
        "built_by": "test/peer/make_gr00t_n15_fixture.py --keys with lerobot==0.5.1 policies/groot "
                    "(GR00TN15 / EagleBackbone / FlowmatchingActionHead / DiT / SelfAttentionTransformer and "
                    "the vendored eagle2_hg_model Eagle25VLForConditionalGeneration), transformers 5.3.0, "
                    "diffusers 0.35.2. Built from code, not read from the checkpoint.",
        "num_keys": len(stored), "num_params_stored": n_params,
        "sources": {
            "eagle_config": "Isaac-GR00T n1.5 vendored gr00t/model/backbone/eagle2_hg_model/config.json "
                            "(forks peri044/Isaac-GR00T, kylinzhao90/Isaac-GR00T; NVIDIA/Isaac-GR00T's own copy in "
                            "the index is the older N1 Eagle-2 file): SigLIP 1152x27, 16 heads, mlp 4304, 224 px, "
                            "patch 14; Qwen3-1.7B (2048, 28 layers, 16 q / 8 kv heads x 128, mlp 6144, vocab 151680, "
                            "rope 1e6, tied embeddings); mlp_connector_layers 1; use_pixel_shuffle false; "
                            "image_token_index 151669; template qwen3-chat. The same vision/text configs are "
                            "quoted from lerobot/eagle2hg-processor-groot-n1p5/config.json in a public notes file.",
            "backbone_cfg": "nvidia/GR00T-N1.5-3B config.json as quoted publicly: eagle_path "
                            "NVEagle/eagle_er-qwen3_1_7B-Siglip2_400M_stage1_5_128gpu_er_v7_1mlp_nops, select_layer "
                            "12, project_to_dim null (=> no eagle_linear keys), reproject_vision false, tune_visual "
                            "true, tune_llm false.",
            "action_head_cfg": "same config.json: action_dim 32, action_horizon 16, backbone_embedding_dim 2048, "
                               "hidden_size 1024, input_embedding_dim 1536, max_state_dim 64, "
                               "num_target_vision_tokens 32, num_inference_timesteps 4, noise Beta(1.5,1) s=0.999, "
                               "1000 buckets, use_vlln true; diffusion_model_cfg: 32 heads x 48, 16 layers, "
                               "output_dim 1024, cross_attention_dim 2048, interleave_self_attention true, "
                               "norm_type ada_norm, dropout 0.2, positional_embeddings null; vl_self_attention_cfg: "
                               "32 heads x 64, 4 layers, dropout 0.2. max_num_embodiments 32 and max_seq_len 1024 "
                               "are the class defaults (not overridden in the quoted config).",
            "key_prefixes": "backbone.eagle_model.vision_model.vision_model.*, "
                            "backbone.eagle_model.language_model.model.layers.<0..11>.*, backbone.eagle_model.mlp1.0.*, "
                            "action_head.model.transformer_blocks.*, action_head.vl_self_attention.transformer_blocks.* "
                            "are also the names public converters read from the real checkpoint (e.g. a GGUF "
                            "converter for gr00t_n1_5 reading backbone.eagle_model.mlp1.0.weight as "
                            "[2048, 1152] and language_model.model.norm.weight).",
            "tied_lm_head": "Qwen3ForCausalLM ties lm_head to embed_tokens (tie_word_embeddings true); "
                            "save_pretrained drops the tied lm_head.weight (Qwen3ForCausalLM._tied_weights_keys), so "
                            "the published files hold embed_tokens only. Inferred from code; public tooling for "
                            "N1.5 checkpoints handles either key ('embed_tokens if present else lm_head'); a "
                            "LeRobot fine-tune saved with safetensors.save_model was seen to keep lm_head instead.",
            "vision_head": "SiglipVisionModel builds its attention-pooling head (vision_model.vision_model.head.*); "
                           "N1.5 never removes it (N1 did) and never uses it (Eagle uses last_hidden_state), so it "
                           "is in the checkpoint but irrelevant (hence N1.5's 'dummy_term' DDP hack).",
            "not_persistent": "position_ids (SigLIP embeddings) and rotary inv_freq are non-persistent buffers: "
                              "not in state_dict.",
            "dtype": "not determined here (the files' dtype is whatever the release used).",
        },
        "eagle_config": ecfg, "groot_config": {k: v for k, v in gcfg.items()},
    }
    meta["groot_config"]["backbone_cfg"] = dict(gcfg["backbone_cfg"],
                                                tokenizer_assets_repo="lerobot/eagle2hg-processor-groot-n1p5")
    out = {"_meta": meta, "keys": stored, "tied_not_stored": {lm_head: keys[lm_head]}}
    KEYS_OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {KEYS_OUT}: {len(stored)} keys, {n_params / 1e9:.3f} B params")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", action="store_true", help="also write test/data/gr00t_n15_keys.json")
    ap.add_argument("--keys-only", action="store_true")
    a = ap.parse_args()
    if not a.keys_only:
        make_fixture()
    if a.keys or a.keys_only:
        make_keys()

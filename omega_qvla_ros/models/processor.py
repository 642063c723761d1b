"""The processor: a robot observation → model input, model output → joint commands.

One implementation for everything that feeds a model: the node, replay, eval,
calibration and training. Its settings (`ProcessorConfig`) travel in the pack's
manifest (`processor`), so a pack normalises, prompts and tokenises exactly as its
model was trained — our small models and imported LeRobot / openpi checkpoints alike.

Pieces, each chosen by a config field:
- cameras: the model's camera names in order, plus `empty_cameras` that are always
  missing (LeRobot's `empty_cameras`); a missing camera is an all −1 image with mask
  False; `missing_cameras_last` puts each observation's present cameras first
  (LeRobot's `_preprocess_images` order).
- images: "letterbox" (our models: cv2 resize-with-pad on uint8, x/127.5 − 1) or
  "openpi" (LeRobot/openpi: x/255 in float32, bilinear resize-with-pad, x·2 − 1).
- state / action normalisation: `Normalizer` with LeRobot's MEAN_STD / MIN_MAX /
  QUANTILES arithmetic or openpi's (+1e-6 in the denominator), in a given precision.
- prompt: "instruction" (the text as given), "pi05" (`Task: {task}, State: {256-bin
  state};\\nAction: `, the state discretised as openpi/LeRobot do) or "gr00t_n15" (GR00T
  N1.5's Eagle chat turn with IMG_CONTEXT placeholders per camera, left padded to the
  batch's longest prompt).
- tokenizer: the byte tokenizer of our small models, or a local tokenizer file carried
  in the pack (tokenizer.json through `tokenizers`, SentencePiece .model).
- actions: the first len(joint_names) model outputs, unnormalised; optionally relative
  to the observed state (LeRobot's `use_relative_actions`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .common import Observation
from .tokenizer import ByteTokenizer, FileTokenizer

NORM_MODES = ("identity", "min_max", "quantiles", "mean_std")
NORM_CONVENTIONS = ("lerobot", "openpi")
IMAGE_RESIZE = ("letterbox", "openpi")
PROMPTS = ("instruction", "pi05", "gr00t_n15")
STATE_BINS = 256


class ObservationError(ValueError):
    """An observation that must not reach the model (the reason is in the message)."""


@dataclass
class Normalizer:
    """Per-dimension normalisation. low/high are (min, max), (q01, q99) or (mean, std)
    for modes min_max, quantiles and mean_std. `convention` fixes the arithmetic:
    "lerobot" (NormalizerProcessorStep: eps only where a span is 0, std + eps) or
    "openpi" (transforms.Normalize: span + 1e-6, std + 1e-6, both directions)."""

    mode: str = "identity"
    low: list[float] | None = None
    high: list[float] | None = None
    convention: str = "lerobot"
    eps: float = 1e-8
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.mode not in NORM_MODES:
            raise ValueError(f"normalisation mode {self.mode!r}; choose from {NORM_MODES}")
        if self.convention not in NORM_CONVENTIONS:
            raise ValueError(f"normalisation convention {self.convention!r}; choose from {NORM_CONVENTIONS}")
        if self.mode != "identity":
            if self.low is None or self.high is None or len(self.low) != len(self.high):
                raise ValueError(f"{self.mode} normalisation needs two statistics of equal length")
            lo, hi = np.asarray(self.low, float), np.asarray(self.high, float)
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi))):
                raise ValueError(f"{self.mode} normalisation statistics are not finite")
            if self.mode == "mean_std" and np.any(hi < 0):
                raise ValueError("mean_std normalisation: negative std")
            if self.mode in ("min_max", "quantiles") and np.any(hi < lo):
                raise ValueError(f"{self.mode} normalisation: a lower bound above its upper bound")
        self.low = None if self.low is None else [float(v) for v in self.low]
        self.high = None if self.high is None else [float(v) for v in self.high]

    @property
    def dims(self) -> int | None:
        return None if self.low is None else len(self.low)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[-1]
        if self.dims is not None and self.dims < n:
            raise ValueError(f"normalisation statistics cover {self.dims} dims, the data has {n}")
        lo = torch.tensor(self.low[:n], dtype=x.dtype)
        hi = torch.tensor(self.high[:n], dtype=x.dtype)
        return lo, hi

    def _span(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        if self.convention == "openpi":
            return hi - lo + 1e-6
        d = hi - lo
        return torch.where(d == 0, torch.tensor(self.eps, dtype=d.dtype), d)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(getattr(torch, self.dtype))
        if self.mode == "identity":
            return x
        lo, hi = self._stats(x)
        if self.mode == "mean_std":
            return (x - lo) / (hi + (1e-6 if self.convention == "openpi" else self.eps))
        if self.convention == "openpi":
            return (x - lo) / self._span(lo, hi) * 2.0 - 1.0
        return 2.0 * (x - lo) / self._span(lo, hi) - 1.0

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(getattr(torch, self.dtype))
        if self.mode == "identity":
            return x
        lo, hi = self._stats(x)
        if self.mode == "mean_std":
            return x * (hi + 1e-6 if self.convention == "openpi" else hi) + lo
        if self.convention == "openpi" or self.mode == "min_max":
            return (x + 1.0) / 2.0 * self._span(lo, hi) + lo
        return (x + 1.0) * self._span(lo, hi) / 2.0 + lo

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ProcessorConfig:
    cameras: list[str]  # the model's cameras, in order (robot camera names)
    joint_names: list[str]  # state and action dimensions, in order
    image_size: int
    max_tokens: int
    empty_cameras: int = 0  # extra always-missing cameras after `cameras`
    missing_cameras_last: bool = False
    image_resize: str = "letterbox"
    prompt: str = "instruction"
    tokenizer: str = "byte"  # "byte", or a tokenizer file name inside the pack
    state_norm: Normalizer = field(default_factory=Normalizer)
    action_norm: Normalizer = field(default_factory=Normalizer)
    state_clip: float | None = None  # clip the normalised state (our small models: 1.5)
    relative_actions: list[bool] | None = None  # per joint: action = model output + state

    def __post_init__(self) -> None:
        if isinstance(self.state_norm, dict):
            self.state_norm = Normalizer(**self.state_norm)
        if isinstance(self.action_norm, dict):
            self.action_norm = Normalizer(**self.action_norm)
        if self.image_resize not in IMAGE_RESIZE:
            raise ValueError(f"image_resize {self.image_resize!r}; choose from {IMAGE_RESIZE}")
        if self.prompt not in PROMPTS:
            raise ValueError(f"prompt {self.prompt!r}; choose from {PROMPTS}")
        if not self.joint_names or len(set(self.joint_names)) != len(self.joint_names):
            raise ValueError("processor joint_names must be non-empty and unique")
        if not self.cameras:
            raise ValueError("processor needs at least one camera")
        for name, norm in (("state", self.state_norm), ("action", self.action_norm)):
            if norm.dims is not None and norm.dims < len(self.joint_names):
                raise ValueError(f"{name} normalisation covers {norm.dims} dims for "
                                 f"{len(self.joint_names)} joints")
        if self.relative_actions is not None and len(self.relative_actions) != len(self.joint_names):
            raise ValueError("relative_actions needs one flag per joint")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ProcessorConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"processor: unknown keys {unknown}")
        return cls(**d)


def letterbox_uint8(img: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB uint8 image into size×size keeping its aspect, black padding
    centred (cv2, INTER_AREA when shrinking): our small models' image path."""
    import cv2

    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    s = size / max(h, w)
    nh, nw = max(1, int(round(h * s))), max(1, int(round(w * s)))
    r = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y:y + nh, x:x + nw] = r
    return out


def resize_with_pad_openpi(img: torch.Tensor, size: int) -> torch.Tensor:
    """openpi's resize_with_pad_torch for float images in [0, 1], [B, 3, H, W]: the
    longer side to `size` (int() of the ratio-scaled sides), bilinear without
    align_corners, clamped to [0, 1], zero padding split evenly (extra pixel at the
    bottom/right)."""
    _, _, h, w = img.shape
    ratio = max(w / size, h / size)
    rh, rw = int(h / ratio), int(w / ratio)
    r = F.interpolate(img, size=(rh, rw), mode="bilinear", align_corners=False).clamp(0.0, 1.0)
    ph, rem_h = divmod(size - rh, 2)
    pw, rem_w = divmod(size - rw, 2)
    return F.pad(r, (pw, pw + rem_w, ph, ph + rem_h), mode="constant", value=0.0)


def check_image(name: str, img: np.ndarray, min_side: int = 8, max_side: int = 8192) -> None:
    if not isinstance(img, np.ndarray):
        raise ObservationError(f"camera {name}: image is {type(img).__name__}, not an array")
    if img.dtype != np.uint8:
        raise ObservationError(f"camera {name}: dtype {img.dtype}, expected uint8")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ObservationError(f"camera {name}: shape {img.shape}, expected H×W×3 RGB")
    if not (min_side <= img.shape[0] <= max_side and min_side <= img.shape[1] <= max_side):
        raise ObservationError(f"camera {name}: size {img.shape[1]}×{img.shape[0]} outside "
                               f"[{min_side}, {max_side}]")


def order_joints(expected: Sequence[str], names: Sequence[str], positions) -> np.ndarray:
    """Positions in the `expected` joint order; duplicate, missing or non-finite joints
    are rejected with their names."""
    pos = np.asarray(positions, dtype=np.float64).reshape(-1)
    names = list(names)
    if len(names) != len(pos):
        raise ObservationError(f"joint state has {len(names)} names but {len(pos)} positions")
    seen: set[str] = set()
    dup = sorted({n for n in names if n in seen or seen.add(n)})
    if dup:
        raise ObservationError(f"joint state names joints more than once: {dup}")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in expected if n not in index]
    if missing:
        raise ObservationError(f"joint state lacks joints {missing}")
    q = np.array([pos[index[n]] for n in expected])
    bad = [n for n, v in zip(expected, q) if not math.isfinite(v)]
    if bad:
        raise ObservationError(f"joint state has non-finite values for {bad}")
    return q


def pi05_prompt(task: str, normalized_state: np.ndarray) -> str:
    """openpi's PaligemmaTokenizer / LeRobot's Pi05PrepareStateTokenizerProcessorStep:
    the task cleaned, the state (normalised to [-1, 1]) as 256-bin integers. Values
    below −1 give bin −1 and above 1 bin 255, exactly as np.digitize does there."""
    clean = task.strip().replace("_", " ").replace("\n", " ")
    bins = np.digitize(normalized_state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1
    return f"Task: {clean}, State: {' '.join(map(str, bins))};\nAction: "


IMG_CONTEXT = "<IMG_CONTEXT>"  # Eagle's image placeholder token
# the chat-template markers a real Qwen3 / Eagle tokenizer encodes as one token each (ids
# of Qwen3's vocabulary), for the byte tokenizer of random-init plumbing
BYTE_CHAT_SPECIALS = {"<|im_start|>": 151644, "<|im_end|>": 151645, "<img>": 151670, "</img>": 151671}


def gr00t_n15_prompt(task: str, cameras: int, image_tokens: int) -> str:
    """GR00T N1.5's prompt (LeRobot's GrootEagleEncodeStep + the Eagle processor's Qwen3 chat
    template): one user turn holding every camera as `<image k><img>` + `image_tokens`
    IMG_CONTEXT placeholders (the model writes the image features there) + `</img>`, then
    the task as Python's str([task]) ("Perform the task." when empty), then the assistant
    generation prompt."""
    views = "".join(f"<image {k}><img>{IMG_CONTEXT * image_tokens}</img>" for k in range(1, cameras + 1))
    return f"<|im_start|>user\n{views}{[task or 'Perform the task.']!s}<|im_end|>\n<|im_start|>assistant\n"


class Processor:
    """Applies a ProcessorConfig. `root` is the pack folder (where a tokenizer file lives).
    `image_tokens`: placeholders per camera of the "gr00t_n15" prompt (the model's)."""

    def __init__(self, config: ProcessorConfig, root: str | Path | None = None, action_width: int | None = None,
                 image_tokens: int | None = None, image_token_id: int | None = None,
                 vocab_size: int | None = None) -> None:
        self.config = config
        self.root = Path(root) if root is not None else None
        self.action_width = action_width  # the model's padded action width
        self.image_tokens = image_tokens
        left = config.prompt == "gr00t_n15"  # Eagle's tokenizer pads left with <|endoftext|>
        side = "left" if left else "right"
        if config.tokenizer == "byte":
            # a prompt with image placeholders and no tokenizer file (random-init plumbing):
            # the placeholder string encodes to the model's image token id
            special = None
            if left and image_token_id is not None:  # chat markers only where the vocabulary has them
                special = {k: v for k, v in BYTE_CHAT_SPECIALS.items() if vocab_size is None or v < vocab_size}
                special[IMG_CONTEXT] = image_token_id
            self.tokenizer = ByteTokenizer(padding_side=side, special=special)
        else:
            if self.root is None:
                raise ValueError(f"processor tokenizer {config.tokenizer!r} needs the pack folder it lives in")
            self.tokenizer = FileTokenizer(self.root / config.tokenizer, padding_side=side,
                                           pad_token="<|endoftext|>" if left else None)

    # ---------------------------------------------------------------- properties
    @property
    def cameras(self) -> list[str]:
        return list(self.config.cameras)

    @property
    def joint_names(self) -> list[str]:
        return list(self.config.joint_names)

    @property
    def dof(self) -> int:
        return len(self.config.joint_names)

    @property
    def num_cameras(self) -> int:
        return len(self.config.cameras) + self.config.empty_cameras

    def to_dict(self) -> dict:
        return self.config.to_dict()

    # ---------------------------------------------------------------- state
    def order_joints(self, names: Sequence[str], positions) -> np.ndarray:
        return order_joints(self.config.joint_names, names, positions)

    def normalize_state(self, q: np.ndarray) -> torch.Tensor:
        """Joint units [B, dof] → the model's state [B, dof] (float32)."""
        s = self.config.state_norm.normalize(torch.as_tensor(np.asarray(q)).to(
            getattr(torch, self.config.state_norm.dtype)))
        if self.config.state_clip is not None:
            s = s.clamp(-self.config.state_clip, self.config.state_clip)
        return s.float()

    # ---------------------------------------------------------------- images
    def _one_image(self, img: np.ndarray) -> torch.Tensor:
        S = self.config_image_size
        if self.config.image_resize == "letterbox":
            x = torch.from_numpy(np.ascontiguousarray(letterbox_uint8(img, S))).permute(2, 0, 1).float()
            return x / 127.5 - 1
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(torch.float32) / 255.0
        if tuple(x.shape[2:]) != (S, S):
            x = resize_with_pad_openpi(x, S)
        return x[0] * 2.0 - 1.0

    @property
    def config_image_size(self) -> int:
        return self.config.image_size

    def images(self, frames: Sequence[dict[str, np.ndarray | None]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per observation {camera: uint8 H×W×3 RGB or None} → images [B, C, 3, S, S] in
        [-1, 1] and their mask [B, C]. Raises ObservationError when an image is malformed
        or an observation has no camera of the model."""
        S = self.config.image_size
        empty = torch.full((3, S, S), -1.0)
        out, masks = [], []
        for f in frames:
            imgs, present = [], []
            for cam in self.config.cameras:
                img = f.get(cam)
                if img is None:
                    imgs.append(empty)
                    present.append(False)
                    continue
                check_image(cam, img)
                imgs.append(self._one_image(img))
                present.append(True)
            if not any(present):
                raise ObservationError(f"no image from the model's cameras {self.config.cameras}")
            imgs += [empty] * self.config.empty_cameras
            present += [False] * self.config.empty_cameras
            if self.config.missing_cameras_last:
                order = [i for i, p in enumerate(present) if p] + [i for i, p in enumerate(present) if not p]
                imgs, present = [imgs[i] for i in order], [present[i] for i in order]
            out.append(torch.stack(imgs))
            masks.append(torch.tensor(present))
        return torch.stack(out), torch.stack(masks)

    # ---------------------------------------------------------------- language
    def prompts(self, instructions: Sequence[str], state: torch.Tensor) -> list[str]:
        if self.config.prompt == "instruction":
            return list(instructions)
        if self.config.prompt == "gr00t_n15":
            if not self.image_tokens:
                raise ValueError("the gr00t_n15 prompt needs the model's image tokens per camera")
            return [gr00t_n15_prompt(t, self.num_cameras, self.image_tokens) for t in instructions]
        s = state.detach().cpu().numpy()
        return [pi05_prompt(t, s[i]) for i, t in enumerate(instructions)]

    def tokens(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, max_tokens] ids and mask; "gr00t_n15": left padded to the batch's longest
        prompt (N1.5 attends to pads after its LLM, so padding must be what it would see),
        and a prompt longer than max_tokens is refused (cutting it would cut image slots)."""
        n15 = self.config.prompt == "gr00t_n15"
        n = self.config.max_tokens + (1 if n15 else 0)
        pairs = [self.tokenizer.encode(t, n) for t in texts]
        ids, mask = torch.stack([p[0] for p in pairs]).long(), torch.stack([p[1] for p in pairs]).bool()
        if n15:
            longest = int(mask.sum(1).max())
            if longest > self.config.max_tokens:
                raise ObservationError(f"GR00T N1.5 prompt of {longest} tokens exceeds max_tokens "
                                       f"{self.config.max_tokens} (instruction too long)")
            ids, mask = ids[:, n - longest:], mask[:, n - longest:]
        return ids, mask

    # ---------------------------------------------------------------- whole observations
    def batch(self, frames: Sequence[dict[str, np.ndarray | None]], instructions: Sequence[str],
              q: np.ndarray) -> Observation:
        """A model-ready batch from images per camera, instructions and joint positions
        [B, dof] in the processor's order (joint units)."""
        images, image_mask = self.images(frames)
        state = self.normalize_state(np.asarray(q).reshape(len(frames), self.dof))
        tokens, mask = self.tokens(self.prompts(instructions, state))
        return Observation(images, tokens, mask, state, image_mask)

    def observation(self, raws) -> tuple[Observation, np.ndarray]:
        """RawObservation(s) → (model batch, joint positions [B, dof] in joint units)."""
        raws = raws if isinstance(raws, (list, tuple)) else [raws]
        q = np.stack([self.order_joints(r.joint_names, r.joint_positions) for r in raws])
        return self.batch([r.images for r in raws], [r.instruction for r in raws], q), q

    # ---------------------------------------------------------------- actions
    def actions(self, model_actions: torch.Tensor, q: np.ndarray | None = None) -> np.ndarray:
        """Model output [B, H, A] → joint targets [B, H, dof] (float64, joint units)."""
        a = self.config.action_norm.unnormalize(model_actions[..., : self.dof].detach().cpu())
        out = a.double().numpy()
        rel = self.config.relative_actions
        if rel is not None and any(rel):
            if q is None:
                raise ValueError("relative actions need the observed joint positions")
            out = out + np.asarray(q, dtype=np.float64)[:, None, :] * np.asarray(rel, dtype=np.float64)
        return out

    def action_targets(self, actions: np.ndarray, q: np.ndarray | None = None) -> torch.Tensor:
        """Joint targets [B, H, dof] → the normalised training target [B, H, A] (zero padded
        to the model's action width)."""
        a = np.asarray(actions, dtype=np.float64)
        rel = self.config.relative_actions
        if rel is not None and any(rel):
            a = a - np.asarray(q, dtype=np.float64)[:, None, :] * np.asarray(rel, dtype=np.float64)
        n = self.config.action_norm.normalize(torch.from_numpy(a).to(getattr(torch, self.config.action_norm.dtype)))
        width = self.action_width or self.dof
        return F.pad(n.float(), (0, width - self.dof))


def data_range_normalizer(q: np.ndarray, lower: np.ndarray, upper: np.ndarray, quantile: float = 0.01,
                          margin: float = 0.1, min_span: float = 0.1) -> Normalizer:
    """Our small models' normalisation: min_max over the range the joints take in `q`
    [N, dof] (quantiles q..1−q, widened by `margin` of the span each side, at least
    `min_span` wide, never beyond the joint limits), computed in float64. A range fitted
    to the data gives the model fine resolution where the task happens."""
    q = np.asarray(q, dtype=np.float64)
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != len(lower) or len(q) == 0:
        raise ValueError(f"need [N, {len(lower)}] joint values, got {q.shape}")
    lo, hi = np.quantile(q, quantile, axis=0), np.quantile(q, 1 - quantile, axis=0)
    mid, half = (lo + hi) / 2, np.maximum((hi - lo) * (0.5 + margin), min_span / 2)
    lo, hi = np.maximum(mid - half, lower), np.minimum(mid + half, upper)
    return Normalizer("min_max", lo.tolist(), hi.tolist(), dtype="float64")


def legacy_processor_config(model_config, extra: dict, default_robot: dict) -> ProcessorConfig:
    """The processor of a pack written before processors were saved: our small models'
    conventions (letterbox images, byte tokens of the instruction, min_max over
    `extra.robot.norm_lower/upper` in float64, normalised state clipped to ±1.5)."""
    robot = extra.get("robot") or default_robot
    lo = robot.get("norm_lower") or robot["lower"]
    hi = robot.get("norm_upper") or robot["upper"]
    cams = list(extra.get("cameras") or robot.get("cameras") or [])[: model_config.cameras]
    norm = Normalizer("min_max", lo, hi, dtype="float64")
    return ProcessorConfig(cameras=cams, joint_names=list(robot["joint_names"]),
                           image_size=model_config.vision.image_size, max_tokens=model_config.max_tokens,
                           state_norm=norm, action_norm=norm, state_clip=1.5,
                           prompt=getattr(model_config, "default_prompt", "instruction"))


def processor_from_manifest(manifest: dict, root: str | Path | None, default_robot: dict,
                            model_config=None) -> Processor:
    """The pack's processor (legacy packs: rebuilt from their `extra`)."""
    from .registry import get_family

    info = manifest["model"]
    cfg = model_config or get_family(info["family"]).config_from_dict(info["config"])
    if manifest.get("processor"):
        pc = ProcessorConfig.from_dict(manifest["processor"])
    else:
        pc = legacy_processor_config(cfg, manifest.get("extra") or {}, default_robot)
    if len(pc.cameras) + pc.empty_cameras != cfg.cameras:
        raise ValueError(f"processor has {len(pc.cameras) + pc.empty_cameras} cameras, the model takes "
                         f"{cfg.cameras}")
    if len(pc.joint_names) > cfg.action_dim:
        raise ValueError(f"processor drives {len(pc.joint_names)} joints, the model outputs {cfg.action_dim}")
    return processor_for(pc, cfg, root)


def processor_for(pc: ProcessorConfig, model_config, root: str | Path | None = None) -> Processor:
    """A Processor for `pc` serving a model of `model_config` (action width, image
    placeholders of prompts that have them)."""
    lm = getattr(model_config, "llm", None) or getattr(model_config, "trunk", None)
    return Processor(pc, root, action_width=model_config.action_dim,
                     image_tokens=getattr(model_config, "image_tokens_per_camera", None),
                     image_token_id=getattr(model_config, "image_token_id", None),
                     vocab_size=getattr(lm, "vocab", None))

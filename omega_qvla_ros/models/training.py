"""Flow-matching training on recorded episodes (CPU friendly, resumable).

Frames come from dataset shards (sim/record.py): images per camera, the normalised joint
state, and the next `horizon` teleop actions (normalised, zero padded to the model's
action width). Checkpoints are safetensors (model + AdamW state) + JSON (step, seed,
losses); `resume` continues from the newest one. No pickle.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .common import Observation
from .processor import Processor
from .quant_noise import QuantNoise


@dataclass
class TrainConfig:
    steps: int = 2000
    batch: int = 16
    lr: float = 3e-4
    weight_decay: float = 1e-4
    warmup: int = 100
    clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25


class FrameSampler:
    """Random training batches from an EpisodeDataset, through the model's processor (the
    same code that prepares observations on the robot). The dataset's joints are in the
    processor's order (the simulator records the ALOHA joints in that order)."""

    def __init__(self, dataset, processor: Processor, horizon: int, seed: int = 0) -> None:
        self.ds, self.proc, self.horizon = dataset, processor, horizon
        missing = [c for c in processor.cameras if c not in dataset.cameras]
        if missing:
            raise ValueError(f"dataset lacks cameras {missing} (has {dataset.cameras})")
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> tuple[Observation, torch.Tensor]:
        rows = self.ds.image_rows
        if len(rows) == 0:
            raise ValueError("the dataset holds no camera images")
        idx = rows[self.rng.integers(0, len(rows), n)]
        per_cam = {cam: self.ds.image(cam, idx) for cam in self.proc.cameras}
        frames = [{cam: per_cam[cam][k] for cam in per_cam} for k in range(n)]
        texts = [self.ds.episodes[int(self.ds.data["episode_index"][i])]["instruction"] for i in idx]
        q = np.asarray(self.ds.data["state"][idx], dtype=np.float64)
        acts = np.stack([self.ds.action_chunk(int(i), self.horizon) for i in idx])
        return self.proc.batch(frames, texts, q), self.proc.action_targets(acts, q)


def _lr(step: int, tc: TrainConfig) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    p = (step - tc.warmup) / max(1, tc.steps - tc.warmup)
    return tc.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def save_checkpoint(path: Path, model, opt, step: int, info: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
              str(path / "model.safetensors"))
    names = {id(p): n for n, p in model.named_parameters()}
    opt_t = {}
    for p, st in opt.state.items():
        for k, v in st.items():
            if torch.is_tensor(v):
                opt_t[f"{names[id(p)]}::{k}"] = v.detach().cpu().reshape(v.shape).contiguous()
    save_file(opt_t, str(path / "optimizer.safetensors"))
    (path / "state.json").write_text(json.dumps({"step": step, **info}, indent=1))


def load_checkpoint(path: Path, model, opt) -> dict:
    model.load_state_dict(load_file(str(path / "model.safetensors")))
    opt_t = load_file(str(path / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, v in opt_t.items():
        name, k = key.split("::")
        opt.state[params[name]][k] = v
    return json.loads((path / "state.json").read_text())


def _normalisation(d: dict):
    """The state/action normalisation a training record holds (its processor's, or the
    norm range older records kept in `robot`)."""
    if "processor" in d:
        n = d["processor"].get("state_norm") or {}
        return n.get("low"), n.get("high")
    r = d.get("robot") or {}
    return r.get("norm_lower"), r.get("norm_upper")


def train(model, sampler: FrameSampler, out_dir: str | Path, tc: TrainConfig, resume: bool = True,
          progress: bool = True, info: dict | None = None, quant_noise: "QuantNoise | None" = None) -> dict:
    """Train (or resume) to `tc.steps`; `info` (normalisation, data, command) is stored
    with every checkpoint, and each resumed invocation's command is kept in `commands`.
    `quant_noise` (models.quant_noise): W4A4 rounding in the batches it draws; the steps
    that had it are counted in `quant_noise_steps`."""
    out = Path(out_dir)
    torch.manual_seed(tc.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    state = {"step": 0, "losses": [], "commands": []}
    ck = out / "checkpoint"
    if resume and (ck / "state.json").exists():
        state = load_checkpoint(ck, model, opt)
        state.setdefault("commands", [])
        if info and _normalisation(state) != _normalisation(info):
            raise ValueError(f"{ck}: the checkpoint was trained with another joint normalisation "
                             "(different data?); use a new --out or --no-resume")
        sampler.rng = np.random.default_rng(tc.seed + state["step"])
    if quant_noise is not None:
        quant_noise.reseed(tc.seed + state["step"])
        state.setdefault("quant_noise_steps", 0)
    info = dict(info or {})
    if "command" in info:
        state["commands"].append([state["step"], info.pop("command")])
    state.update(info)
    model.train()
    t0 = time.time()
    from tqdm import tqdm
    bar = tqdm(range(state["step"], tc.steps), initial=state["step"], total=tc.steps, disable=not progress,
               desc="train")
    running = None
    if quant_noise is not None:
        quant_noise.install()
    try:
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _lr(step, tc)
            obs, actions = sampler.batch(tc.batch)
            if quant_noise is not None and quant_noise.draw():
                state["quant_noise_steps"] += 1
            loss = model.loss(obs, actions)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
            opt.step()
            lv = loss.detach().item()
            running = lv if running is None else 0.95 * running + 0.05 * lv
            bar.set_postfix(loss=f"{running:.4f}")
            if (step + 1) % tc.log_every == 0:
                state["losses"].append([step + 1, running])
            if (step + 1) % tc.checkpoint_every == 0 or step + 1 == tc.steps:
                state["step"] = step + 1
                state["seconds"] = state.get("seconds", 0.0) + time.time() - t0
                t0 = time.time()
                save_checkpoint(ck, model, opt, step + 1, {k: v for k, v in state.items() if k != "step"})
    finally:
        if quant_noise is not None:
            quant_noise.remove()
    model.eval()
    return state

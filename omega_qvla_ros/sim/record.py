"""Episode recording: the same scripted episodes become a rosbag2 (the node's topics)
and training-dataset shards (safetensors + JSON metadata).

Bag topics (stamps in sim time, identical in headers, bag timestamps and /clock):
  /cam_high/image_raw …              sensor_msgs/msg/Image (rgb8), or
  /cam_high/image_raw/compressed …   sensor_msgs/msg/CompressedImage (jpeg) with compress=True
  /joint_states                      sensor_msgs/msg/JointState (14 ALOHA joints, pos + vel)
  /teleop/joint_states               sensor_msgs/msg/JointState (the expert's joint targets,
                                     as the leader arms would publish them)
  /instruction                       std_msgs/msg/String (once per episode)
  /clock                             rosgraph_msgs/msg/Clock (every control step)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .aloha import DT, INSTRUCTIONS, JOINT_NAMES, AlohaSim
from .expert import EPISODE_STEPS, run_expert_episode

EPISODE_GAP_NS = 1_000_000_000  # one second of bag time between episodes


@dataclass
class Episode:
    task: str
    seed: int
    instruction: str
    success: bool
    stamps_ns: np.ndarray  # [T] int64
    qpos: np.ndarray  # [T, 14] observed joint positions (grippers normalised)
    qvel: np.ndarray  # [T, 14]
    actions: np.ndarray  # [T, 14] teleop commands issued after observing frame t
    images: dict[str, np.ndarray] = field(default_factory=dict)  # cam -> uint8 [N, H, W, 3]
    image_frames: np.ndarray | None = None  # [N] frame index of each image (None: every frame)
    action_noise: float = 0.0  # std (rad) of the perturbation on the executed arm joints

    @property
    def length(self) -> int:
        return len(self.stamps_ns)

    def frames_with_images(self) -> np.ndarray:
        if not self.images:
            return np.zeros(0, np.int64)
        return np.arange(self.length) if self.image_frames is None else self.image_frames


def record_episode(sim: AlohaSim, seed: int, t0_ns: int = 0, steps: int = EPISODE_STEPS,
                   image_every: int = 1, action_noise: float = 0.0, noise_tau: float = 0.5) -> Episode:
    """One expert episode; camera images on every `image_every`-th frame (rendering is
    what costs on a CPU; joints and actions are kept for every frame). `action_noise`
    > 0 perturbs what is executed (see ActionPerturbation; seeded by the episode seed)
    while the recorded actions stay the expert's commands."""
    if image_every < 1:
        raise ValueError("image_every must be >= 1")
    qpos, qvel, acts, stamps, img_frames = [], [], [], [], []
    imgs: dict[str, list[np.ndarray]] = {c: [] for c in sim.cameras} if sim.render_enabled else {}

    def on_step(t, obs, a):
        stamps.append(t0_ns + int(round(t * DT * 1e9)))
        qpos.append(obs.qpos)
        qvel.append(obs.qvel)
        acts.append(a)
        if imgs and t % image_every == 0:
            img_frames.append(t)
            for c in imgs:
                imgs[c].append(obs.images[c])

    ok = run_expert_episode(sim, seed, steps=steps, on_step=on_step, render_every=image_every,
                            action_noise=action_noise, noise_tau=noise_tau)
    return Episode(sim.task, seed, INSTRUCTIONS[sim.task], ok, np.array(stamps, dtype=np.int64),
                   np.array(qpos, dtype=np.float32), np.array(qvel, dtype=np.float32),
                   np.array(acts, dtype=np.float32), {c: np.stack(v) for c, v in imgs.items()},
                   None if image_every == 1 else np.array(img_frames, dtype=np.int64), action_noise)


# ---------------------------------------------------------------- rosbag2
class BagRecorder:
    """Writes episodes into one rosbag2 (MCAP by default, or sqlite3)."""

    def __init__(self, path: str | Path, storage: str = "mcap", compress_images: bool = False,
                 jpeg_quality: int = 75) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in ("mcap", "sqlite3"):
            raise ValueError("storage must be 'mcap' or 'sqlite3'")
        self.ts = get_typestore(Stores.ROS2_HUMBLE)
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(Path(path), version=8, storage_plugin=plugin)
        self.compress, self.quality = compress_images, jpeg_quality
        self.conns: dict[str, object] = {}
        self.next_t0 = 0

    def __enter__(self):
        self.writer.open()
        return self

    def __exit__(self, *exc):
        self.writer.close()

    def _conn(self, topic: str, msgtype: str):
        if topic not in self.conns:
            self.conns[topic] = self.writer.add_connection(topic, msgtype, typestore=self.ts)
        return self.conns[topic]

    def _write(self, topic: str, msgtype: str, stamp: int, msg) -> None:
        self.writer.write(self._conn(topic, msgtype), stamp, self.ts.serialize_cdr(msg, msgtype))

    def _header(self, stamp: int, frame: str = ""):
        T = self.ts.types
        return T["std_msgs/msg/Header"](stamp=T["builtin_interfaces/msg/Time"](
            sec=stamp // 1_000_000_000, nanosec=stamp % 1_000_000_000), frame_id=frame)

    def _joint_state(self, stamp: int, pos: np.ndarray, vel: np.ndarray | None):
        T = self.ts.types
        return T["sensor_msgs/msg/JointState"](
            header=self._header(stamp), name=list(JOINT_NAMES), position=pos.astype(np.float64),
            velocity=(vel.astype(np.float64) if vel is not None else np.zeros(0)), effort=np.zeros(0))

    def write_episode(self, ep: Episode) -> int:
        """Append `ep`, shifted to start after what is already in the bag; returns its t0."""
        import cv2

        T = self.ts.types
        t0 = self.next_t0
        stamps = ep.stamps_ns - ep.stamps_ns[0] + t0
        image_of = {int(f): k for k, f in enumerate(ep.frames_with_images())}
        self._write("/instruction", "std_msgs/msg/String", int(stamps[0]), T["std_msgs/msg/String"](data=ep.instruction))
        for i, st in enumerate(stamps):
            st = int(st)
            self._write("/clock", "rosgraph_msgs/msg/Clock", st, T["rosgraph_msgs/msg/Clock"](
                clock=self._header(st).stamp))
            self._write("/joint_states", "sensor_msgs/msg/JointState", st,
                        self._joint_state(st, ep.qpos[i], ep.qvel[i]))
            self._write("/teleop/joint_states", "sensor_msgs/msg/JointState", st,
                        self._joint_state(st, ep.actions[i], None))
            for cam, frames in (ep.images.items() if i in image_of else ()):
                rgb = frames[image_of[i]]
                if self.compress:
                    ok, buf = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                    if not ok:
                        raise RuntimeError("JPEG encoding failed")
                    msg = T["sensor_msgs/msg/CompressedImage"](header=self._header(st, cam), format="jpeg",
                                                               data=np.frombuffer(buf.tobytes(), np.uint8))
                    self._write(f"/{cam}/image_raw/compressed", "sensor_msgs/msg/CompressedImage", st, msg)
                else:
                    h, w, _ = rgb.shape
                    msg = T["sensor_msgs/msg/Image"](header=self._header(st, cam), height=h, width=w,
                                                     encoding="rgb8", is_bigendian=0, step=3 * w,
                                                     data=np.ascontiguousarray(rgb).reshape(-1))
                    self._write(f"/{cam}/image_raw", "sensor_msgs/msg/Image", st, msg)
        self.next_t0 = int(stamps[-1]) + EPISODE_GAP_NS
        return t0


# ---------------------------------------------------------------- dataset shards
def write_shard(episodes: list[Episode], path: str | Path) -> Path:
    """One safetensors shard: frames of all episodes concatenated, with indices;
    `image_index[row]` points into the image arrays (-1: no image on that frame)."""
    from safetensors.numpy import save_file

    path = Path(path)
    image_index, n_img = [], 0
    for e in episodes:
        ix = np.full(e.length, -1, np.int64)
        f = e.frames_with_images()
        ix[f] = n_img + np.arange(len(f))
        n_img += len(f)
        image_index.append(ix)
    tensors = {
        "state": np.concatenate([e.qpos for e in episodes]),
        "velocity": np.concatenate([e.qvel for e in episodes]),
        "actions": np.concatenate([e.actions for e in episodes]),
        "episode_index": np.concatenate([np.full(e.length, i, np.int64) for i, e in enumerate(episodes)]),
        "frame_index": np.concatenate([np.arange(e.length, dtype=np.int64) for e in episodes]),
        "stamp_ns": np.concatenate([e.stamps_ns for e in episodes]),
        "success": np.array([e.success for e in episodes], dtype=np.uint8),
        "image_index": np.concatenate(image_index),
    }
    for cam in episodes[0].images:
        tensors[f"images.{cam}"] = np.concatenate([e.images[cam] for e in episodes])
    meta = {"episodes": json.dumps([{"task": e.task, "seed": e.seed, "instruction": e.instruction,
                                     "success": bool(e.success), "length": e.length,
                                     "action_noise": e.action_noise} for e in episodes]),
            "joint_names": json.dumps(JOINT_NAMES), "fps": str(int(round(1 / DT)))}
    save_file(tensors, str(path), metadata=meta)
    return path


class EpisodeDataset:
    """Frames from one or more shards, with action chunks for flow-matching training."""

    def __init__(self, shards: list[str | Path], only_success: bool = True) -> None:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        self.frames: list[dict[str, np.ndarray]] = []
        self.episodes: list[dict] = []
        cols: dict[str, list[np.ndarray]] = {}
        offset = n_images = 0
        for s in shards:
            with safe_open(str(s), framework="np") as f:
                meta = f.metadata()
            t = load_file(str(s))
            eps = json.loads(meta["episodes"])
            keep = np.array([bool(e["success"]) or not only_success for e in eps])
            mask = keep[t["episode_index"]]
            remap = np.cumsum(keep) - 1 + offset
            n_rows = len(t["state"])
            img_ix = t.pop("image_index", None)
            if img_ix is None:  # shards written before sparse images: one per frame
                img_ix = np.arange(n_rows) if any(k.startswith("images.") for k in t) else np.full(n_rows, -1)
            img_ix = img_ix[mask]
            used = img_ix[img_ix >= 0]  # images of kept episodes, renumbered after earlier shards
            new_ix = np.full(len(img_ix), -1, np.int64)
            new_ix[img_ix >= 0] = np.arange(len(used)) + n_images
            n_images += len(used)
            cols.setdefault("image_index", []).append(new_ix)
            for k, v in t.items():
                if k == "success":
                    continue
                v = v[used] if k.startswith("images.") else v[mask]
                if k == "episode_index":
                    v = remap[v]
                cols.setdefault(k, []).append(v)
            self.episodes += [e for e, k in zip(eps, keep) if k]
            offset += int(keep.sum())
        self.data = {k: np.concatenate(v) for k, v in cols.items()}
        self.cameras = sorted(k.split(".", 1)[1] for k in self.data if k.startswith("images."))
        self.image_rows = np.nonzero(self.data["image_index"] >= 0)[0]  # frames a sampler can use

    def __len__(self) -> int:
        return len(self.data["state"])

    def action_chunk(self, i: int, horizon: int) -> np.ndarray:
        """Actions i … i+horizon-1 of frame i's episode, the last one repeated past its end."""
        ep = self.data["episode_index"]
        idx = np.arange(i, i + horizon)
        idx = np.minimum(idx, len(ep) - 1)
        same = ep[idx] == ep[i]
        last = i + int(same.sum()) - 1
        idx = np.where(same, idx, last)
        return self.data["actions"][idx]

    def image(self, cam: str, rows: np.ndarray) -> np.ndarray:
        """Images of camera `cam` at frame rows `rows` (each must have one)."""
        ix = self.data["image_index"][rows]
        if np.any(ix < 0):
            raise IndexError("some requested frames carry no image")
        return self.data[f"images.{cam}"][ix]

    def frame(self, i: int) -> dict:
        ix = int(self.data["image_index"][i])
        d = {k: (v[ix] if ix >= 0 else None) if k.startswith("images.") else v[i] for k, v in self.data.items()}
        d["instruction"] = self.episodes[int(self.data["episode_index"][i])]["instruction"]
        return d

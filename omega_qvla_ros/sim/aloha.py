"""ALOHA bimanual ViperX tasks (the MJCF scenes shipped by the PyPI package `gym-aloha`)
driven directly through MuJoCo: 14-D joint-position actions at 50 Hz,
`[left 6 joints, left gripper, right 6 joints, right gripper]`, grippers normalised
0 = closed … 1 = open. Offscreen rendering on the CPU (EGL) with shadows and
multisampling off, at a small configurable size.

Success follows gym-aloha's contact rewards (4 = cube held by the left gripper in the
air / peg touching the socket's pin).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")
try:  # load libtriton before MuJoCo's EGL renderer brings in Mesa's LLVM: in the other order
    import triton  # noqa: F401  torch's own later import of triton (building an optimizer) segfaults
except ImportError:
    pass
import mujoco  # noqa: E402

TASKS = ("transfer_cube", "insertion")
INSTRUCTIONS = {"transfer_cube": "transfer the red cube from the right arm to the left arm",
                "insertion": "insert the red peg into the blue socket"}
DT = 0.02
JOINT_NAMES = [f"{side}_{j}" for side in ("left", "right") for j in
               ("waist", "shoulder", "elbow", "forearm_roll", "wrist_angle", "wrist_rotate", "gripper")]
CAMERAS = {"cam_high": "top", "cam_left_wrist": "left_wrist", "cam_right_wrist": "right_wrist",
           "cam_table": "table_zoom"}
# Cameras this package adds to gym-aloha's scenes: MJCF name -> (camera it copies, its fovy).
# `cam_table` is the top camera with a narrower lens (56° instead of 78°): the table fills
# the frame and the cube covers ~1.5x more pixels per side at the same image size.
ADDED_CAMERAS = {"table_zoom": ("top", 56.0)}
START_ARM_POSE = np.array([0, -0.96, 1.16, 0, -0.3, 0, 0.02239, -0.02239] * 2)
GRIPPER_OPEN, GRIPPER_CLOSE = 0.05800, 0.01844  # puppet finger positions


def gripper_to_finger(g: float) -> float:
    return g * (GRIPPER_OPEN - GRIPPER_CLOSE) + GRIPPER_CLOSE


def finger_to_gripper(x: float) -> float:
    return (x - GRIPPER_CLOSE) / (GRIPPER_OPEN - GRIPPER_CLOSE)


def assets_dir() -> Path:
    try:
        import gym_aloha
    except ImportError:
        raise ImportError("the simulator needs the `gym-aloha` package (make setup installs it)") from None
    return Path(gym_aloha.__file__).parent / "assets"


def sample_object_pose(task: str, seed: int) -> np.ndarray:
    """Object pose(s) drawn like gym-aloha does, from a per-seed generator."""
    rng = np.random.RandomState(seed)
    quat = np.array([1.0, 0, 0, 0])
    if task == "transfer_cube":
        return np.concatenate([rng.uniform([0.0, 0.4, 0.05], [0.2, 0.6, 0.05]), quat])
    peg = rng.uniform([0.1, 0.4, 0.05], [0.2, 0.6, 0.05])
    socket = rng.uniform([-0.2, 0.4, 0.05], [-0.1, 0.6, 0.05])
    return np.concatenate([peg, quat, socket, quat])


def load_scene(task: str, cameras: tuple[str, ...] = ()) -> "mujoco.MjModel":
    """gym-aloha's scene for `task` with whichever of `cameras` (CAMERAS names) it lacks
    mounted from ADDED_CAMERAS (only then is it compiled through MjSpec; otherwise the
    scene is loaded as shipped)."""
    path = str(assets_dir() / f"bimanual_viperx_{task}.xml")
    added = [CAMERAS[c] for c in cameras if CAMERAS[c] in ADDED_CAMERAS]
    if not added:
        return mujoco.MjModel.from_xml_path(path)
    spec = mujoco.MjSpec.from_file(path)
    for name in added:
        base, fovy = ADDED_CAMERAS[name]
        ref = next(c for c in spec.cameras if c.name == base)
        spec.worldbody.add_camera(name=name, pos=ref.pos, quat=ref.quat, fovy=fovy, mode=ref.mode,
                                  targetbody=ref.targetbody)
    return spec.compile()


@dataclass
class Step:
    qpos: np.ndarray  # [14]
    qvel: np.ndarray  # [14]
    images: dict[str, np.ndarray] = field(default_factory=dict)  # uint8 HWC RGB
    reward: int = 0


class AlohaSim:
    """One task scene. `reset(seed)` randomises the objects; `step(action)` runs 20 ms."""

    def __init__(self, task: str, image_size: int = 224, cameras: tuple[str, ...] = ("cam_high",),
                 render: bool = True) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose from {TASKS}")
        for c in cameras:
            if c not in CAMERAS:
                raise ValueError(f"unknown camera {c!r}; choose from {sorted(CAMERAS)}")
        self.task, self.cameras, self.render_enabled = task, tuple(cameras), render
        self.model = load_scene(task, self.cameras)
        self.model.light_castshadow[:] = 0
        self.model.vis.quality.offsamples = 0
        self.data = mujoco.MjData(self.model)
        self.substeps = int(round(DT / self.model.opt.timestep))
        self.renderer = mujoco.Renderer(self.model, image_size, image_size) if render else None
        self.image_size = image_size
        self._geom = lambda name: mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_GEOM, name)
        self.object_pose = None
        self.max_reward_seen = 0

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------- state
    def qpos(self) -> np.ndarray:
        q = self.data.qpos
        return np.concatenate([q[0:6], [finger_to_gripper(q[6])], q[8:14], [finger_to_gripper(q[14])]])

    def qvel(self) -> np.ndarray:
        v = self.data.qvel
        span = GRIPPER_OPEN - GRIPPER_CLOSE
        return np.concatenate([v[0:6], [v[6] / span], v[8:14], [v[14] / span]])

    def render(self) -> dict[str, np.ndarray]:
        if self.renderer is None:
            return {}
        out = {}
        for c in self.cameras:
            self.renderer.update_scene(self.data, camera=CAMERAS[c])
            out[c] = self.renderer.render().copy()
        return out

    def observe(self, render: bool = True) -> Step:
        return Step(self.qpos(), self.qvel(), self.render() if render else {}, self.reward())

    def reset(self, seed: int) -> Step:
        mujoco.mj_resetData(self.model, self.data)
        self.object_pose = sample_object_pose(self.task, seed)
        self.data.qpos[:16] = START_ARM_POSE
        self.data.ctrl[:] = START_ARM_POSE
        self.data.qpos[16:16 + len(self.object_pose)] = self.object_pose
        mujoco.mj_forward(self.model, self.data)
        self.max_reward_seen = 0
        return self.observe()

    def step(self, action: np.ndarray, render: bool = True) -> Step:
        """Apply `action` for one control period; `render=False` skips the cameras (their
        images are the expensive part on a CPU)."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (14,) or not np.all(np.isfinite(a)):
            raise ValueError(f"action must be 14 finite values, got shape {a.shape}")
        lf, rf = gripper_to_finger(a[6]), gripper_to_finger(a[13])
        self.data.ctrl[:] = np.concatenate([a[0:6], [lf, -lf], a[7:13], [rf, -rf]])
        for _ in range(self.substeps):
            mujoco.mj_step(self.model, self.data)
        s = self.observe(render)
        self.max_reward_seen = max(self.max_reward_seen, s.reward)
        return s

    @property
    def success(self) -> bool:
        return self.max_reward_seen == 4

    # ---------------------------------------------------------------- reward
    def _contacts(self) -> set[tuple[str, str]]:
        pairs = set()
        m = self.model
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            a, b = m.geom(c.geom1).name, m.geom(c.geom2).name
            pairs.add((a, b))
            pairs.add((b, a))
        return pairs

    def reward(self) -> int:
        c = self._contacts()
        if self.task == "transfer_cube":
            right = ("red_box", "vx300s_right/10_right_gripper_finger") in c
            left = ("red_box", "vx300s_left/10_left_gripper_finger") in c
            table = ("red_box", "table") in c
            r = 0
            if right:
                r = 1
            if right and not table:
                r = 2
            if left:
                r = 3
            if left and not table:
                r = 4
            return r
        sockets = [f"socket-{i}" for i in range(1, 5)]
        right = ("red_peg", "vx300s_right/10_right_gripper_finger") in c
        left = any((s, "vx300s_left/10_left_gripper_finger") in c for s in sockets)
        peg_table = ("red_peg", "table") in c
        socket_table = any((s, "table") in c for s in sockets)
        peg_socket = any(("red_peg", s) in c for s in sockets)
        r = 0
        if left and right:
            r = 1
        if left and right and not peg_table and not socket_table:
            r = 2
        if peg_socket and not peg_table and not socket_table:
            r = 3
        if ("red_peg", "pin") in c:
            r = 4
        return r

"""Scripted expert ("teleop" source): end-effector waypoints from the object poses
(approach, descend, grasp, lift, meet, hand over / insert — the ACT authors' recipe),
turned into 14-D joint targets by damped-least-squares IK on the joint-space scene
with MuJoCo's Jacobians. Nothing depends on mocap welds, so the expert runs under
the MuJoCo version gym-aloha installs.
"""
from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from .aloha import DT, START_ARM_POSE, AlohaSim

EPISODE_STEPS = 400
ARM_QPOS = {"left": slice(0, 6), "right": slice(8, 14)}
TCP = np.array([0.11, 0.0, 0.0])  # tool point between the fingertips, in the gripper_link frame


@dataclass
class Waypoint:
    t: int
    xyz: np.ndarray
    rot: np.ndarray  # world-frame rotation applied to the gripper's start orientation
    gripper: float


def _rot(axis, deg) -> np.ndarray:
    q = np.zeros(4)
    mujoco.mju_axisAngle2Quat(q, np.asarray(axis, dtype=np.float64), np.deg2rad(deg))
    return q


IDENTITY = np.array([1.0, 0, 0, 0])


def plan(task: str, object_pose: np.ndarray, start: dict[str, np.ndarray]) -> dict[str, list[Waypoint]]:
    """Tool-point waypoints per arm for one episode (50 Hz steps)."""
    L, R = start["left"], start["right"]
    if task == "transfer_cube":
        box = object_pose[:3]
        meet = np.array([0.0, 0.5, 0.25])
        pick_r = _rot([0, 1, 0], -60)
        meet_l = _rot([1, 0, 0], 90)
        right = [Waypoint(0, R, IDENTITY, 0), Waypoint(90, box + [0, 0, 0.10], pick_r, 1),
                 Waypoint(130, box + [0, 0, -0.005], pick_r, 1), Waypoint(170, box + [0, 0, -0.005], pick_r, 0),
                 Waypoint(200, meet + [0.06, 0, 0], pick_r, 0), Waypoint(220, meet + [0.02, 0, 0], pick_r, 0),
                 Waypoint(300, meet + [0.02, 0, 0], pick_r, 0), Waypoint(320, meet + [0.02, 0, 0], pick_r, 1),
                 Waypoint(360, meet + [0.12, 0, 0.05], pick_r, 1), Waypoint(400, meet + [0.12, 0, 0.05], pick_r, 1)]
        left = [Waypoint(0, L, IDENTITY, 0), Waypoint(100, meet + [-0.12, 0, 0], meet_l, 1),
                Waypoint(260, meet + [-0.015, 0, 0], meet_l, 1), Waypoint(300, meet + [-0.015, 0, 0], meet_l, 0),
                Waypoint(360, meet + [-0.12, 0, 0], meet_l, 0), Waypoint(400, meet + [-0.12, 0, 0], meet_l, 0)]
        return {"left": left, "right": right}
    peg, socket = object_pose[:3], object_pose[7:10]
    meet = np.array([0.0, 0.5, 0.15])
    pick_l, pick_r = _rot([0, 1, 0], 60), _rot([0, 1, 0], -60)
    left = [Waypoint(0, L, IDENTITY, 0), Waypoint(120, socket + [0, 0, 0.10], pick_l, 1),
            Waypoint(170, socket + [0, 0, 0.0], pick_l, 1), Waypoint(220, socket + [0, 0, 0.0], pick_l, 0),
            Waypoint(285, meet + [-0.1, 0, 0], pick_l, 0), Waypoint(340, meet + [-0.05, 0, 0], pick_l, 0),
            Waypoint(400, meet + [-0.05, 0, 0], pick_l, 0)]  # socket centre, once aligned
    right = [Waypoint(0, R, IDENTITY, 0), Waypoint(120, peg + [0, 0, 0.10], pick_r, 1),
             Waypoint(170, peg + [0, 0, -0.005], pick_r, 1), Waypoint(220, peg + [0, 0, -0.005], pick_r, 0),
             Waypoint(285, meet + [0.1, 0, 0], pick_r, 0), Waypoint(340, meet + [0.03, 0, 0], pick_r, 0),
             Waypoint(400, meet + [0.03, 0, 0], pick_r, 0)]  # peg centre: tip reaches the pin
    return {"left": left, "right": right}


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    th = np.arccos(d)
    return (np.sin((1 - a) * th) * q0 + np.sin(a * th) * q1) / np.sin(th)


def interpolate(wps: list[Waypoint], t: int) -> tuple[np.ndarray, np.ndarray, float]:
    if t <= wps[0].t:
        w = wps[0]
        return w.xyz, w.rot, w.gripper
    for a, b in zip(wps, wps[1:]):
        if a.t <= t <= b.t:
            f = (t - a.t) / max(b.t - a.t, 1)
            return a.xyz + f * (b.xyz - a.xyz), _slerp(a.rot, b.rot, f), a.gripper + f * (b.gripper - a.gripper)
    w = wps[-1]
    return w.xyz, w.rot, w.gripper


class IKSolver:
    """Damped least squares on one arm's 6 joints, on a scratch copy of the scene."""

    def __init__(self, model: mujoco.MjModel, damping: float = 0.05, rot_weight: float = 0.3,
                 iters: int = 10, posture_gain: float = 0.2) -> None:
        self.m = model
        self.d = mujoco.MjData(model)
        self.damping, self.rot_weight, self.iters = damping, rot_weight, iters
        self.posture_gain = posture_gain
        self.rest = {s: START_ARM_POSE[ARM_QPOS[s]].copy() for s in ("left", "right")}
        self.body = {s: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, f"vx300s_{s}/gripper_link")
                     for s in ("left", "right")}
        self.jnt_range = {s: model.jnt_range[ARM_QPOS[s]].copy() for s in ("left", "right")}

    def pose(self, qpos: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
        """Tool point position and gripper orientation (quat) at `qpos`."""
        self.d.qpos[:] = qpos
        mujoco.mj_kinematics(self.m, self.d)
        b = self.d.body(self.body[side])
        return b.xpos + b.xmat.reshape(3, 3) @ TCP, b.xquat.copy()

    def solve(self, qpos: np.ndarray, side: str, xyz: np.ndarray, quat: np.ndarray) -> np.ndarray:
        sl = ARM_QPOS[side]
        d = self.d
        d.qpos[:] = qpos
        jacp, jacr = np.zeros((3, self.m.nv)), np.zeros((3, self.m.nv))
        qerr, qcur_conj = np.zeros(4), np.zeros(4)
        w = np.array([1, 1, 1, self.rot_weight, self.rot_weight, self.rot_weight])
        for _ in range(self.iters):
            mujoco.mj_fwdPosition(self.m, d)
            b = d.body(self.body[side])
            tcp = b.xpos + b.xmat.reshape(3, 3) @ TCP
            ep = xyz - tcp
            mujoco.mju_negQuat(qcur_conj, b.xquat)
            mujoco.mju_mulQuat(qerr, quat, qcur_conj)
            er = np.zeros(3)
            mujoco.mju_quat2Vel(er, qerr, 1.0)
            e = np.concatenate([ep, er]) * w
            if np.linalg.norm(ep) < 1e-4 and np.linalg.norm(er) < 1e-3:
                break
            mujoco.mj_jac(self.m, d, jacp, jacr, tcp, self.body[side])
            J = np.vstack([jacp[:, sl], jacr[:, sl]]) * w[:, None]
            J_pinv = J.T @ np.linalg.inv(J @ J.T + self.damping ** 2 * np.eye(6))
            dq = J_pinv @ e
            # secondary task in the (near-)null space: pull towards the rest posture. At the
            # wrist singularity (wrist_angle ≈ 0) forearm_roll and wrist_rotate can
            # counter-rotate freely, and without this they drift to ±π in either direction
            # from episode to episode: same gripper pose, joint paths a policy cannot learn.
            dq += (np.eye(6) - J_pinv @ J) @ (self.posture_gain * (self.rest[side] - d.qpos[sl]))
            lo, hi = self.jnt_range[side][:, 0], self.jnt_range[side][:, 1]
            d.qpos[sl] = np.clip(d.qpos[sl] + dq, lo, hi)
        return d.qpos[sl].copy()


class ScriptedExpert:
    """Joint-space teleop commands for one episode of `sim`'s task (call after reset)."""

    def __init__(self, sim: AlohaSim) -> None:
        self.sim = sim
        self.ik = IKSolver(sim.model)
        q0 = np.zeros(sim.model.nq)
        q0[:16] = START_ARM_POSE
        start = {}
        self.start_quat = {}
        for side in ("left", "right"):
            start[side], self.start_quat[side] = self.ik.pose(q0, side)
        self.waypoints = plan(sim.task, sim.object_pose, start)
        self.q_cmd = q0.copy()
        self.q_cmd[16:16 + len(sim.object_pose)] = sim.object_pose

    # control step at which the expert looks where the grasped objects really are
    ALIGN_AT = {"insertion": 225, "transfer_cube": 230}

    def _align_held_objects(self) -> None:
        """Grasps are never exactly centred: aim the remaining waypoints at where the
        objects really sit. Insertion: shift each hand by its object's offset from the
        tool point. Transfer: send the left hand to where the cube really is."""
        q = self.sim.data.qpos
        t_align = self.ALIGN_AT[self.sim.task]
        if self.sim.task == "insertion":
            shifts = {}
            for side, obj in (("right", q[16:19]), ("left", q[23:26])):
                tcp, _ = self.ik.pose(self.sim.data.qpos, side)
                shifts[side] = obj - tcp
            for side, off in shifts.items():
                for w in self.waypoints[side]:
                    if w.t > t_align:
                        w.xyz = w.xyz - off
        else:
            tcp, _ = self.ik.pose(self.sim.data.qpos, "right")
            off = q[16:19] - tcp  # cube centre relative to the right tool point
            for w in self.waypoints["left"]:
                if w.t > t_align:
                    w.xyz = w.xyz + off

    def action(self, t: int) -> np.ndarray:
        if t == self.ALIGN_AT.get(self.sim.task):
            self._align_held_objects()
        out = np.zeros(14)
        for side, off in (("left", 0), ("right", 7)):
            xyz, rot, g = interpolate(self.waypoints[side], t)
            quat = np.zeros(4)
            mujoco.mju_mulQuat(quat, rot, self.start_quat[side])
            self.q_cmd[ARM_QPOS[side]] = self.ik.solve(self.q_cmd, side, xyz, quat)
            out[off:off + 6] = self.q_cmd[ARM_QPOS[side]]
            out[off + 6] = g
        return out


class ActionPerturbation:
    """Slowly varying noise on the executed arm joints (DART-style data collection).

    An Ornstein-Uhlenbeck process per arm joint (grippers untouched) with stationary
    std `sigma` rad and correlation time `tau` s. Added to what the robot executes, not
    to what is recorded: the state drifts off the expert's path while the labels stay
    the expert's commands, which lead back to the plan — so a policy trained on them
    sees states off the demonstrations and how to recover from them. The expert keeps
    its own commanded state, so its commands do not follow the noise.
    """

    ARM = np.r_[0:6, 7:13]

    def __init__(self, sigma: float, tau: float = 0.5, seed: int = 0, dt: float = DT) -> None:
        if sigma < 0 or tau <= 0:
            raise ValueError("perturbation needs sigma >= 0 and tau > 0")
        self.a = max(0.0, 1.0 - dt / tau)
        self.b = sigma * np.sqrt(1.0 - self.a ** 2)
        self.rng = np.random.default_rng(seed)
        self.n = np.zeros(14)

    def __call__(self, action: np.ndarray) -> np.ndarray:
        self.n[self.ARM] = self.a * self.n[self.ARM] + self.b * self.rng.standard_normal(len(self.ARM))
        return action + self.n


def run_expert_episode(sim: AlohaSim, seed: int, steps: int = EPISODE_STEPS, on_step=None,
                       render_every: int = 1, action_noise: float = 0.0, noise_tau: float = 0.5) -> bool:
    """Reset to `seed`, drive with the scripted expert; returns success. `on_step(t, obs,
    action)` sees the observation before each action (for recording) and the expert's
    command (the label); `action_noise` > 0 perturbs only what is executed (see
    ActionPerturbation, seeded by `seed`); images are rendered only on steps that are
    multiples of `render_every`."""
    obs = sim.reset(seed)
    expert = ScriptedExpert(sim)
    perturb = ActionPerturbation(action_noise, noise_tau, seed) if action_noise > 0 else None
    for t in range(steps):
        a = expert.action(t)
        if on_step is not None:
            on_step(t, obs, a)
        obs = sim.step(a if perturb is None else perturb(a), render=(t + 1) % render_every == 0)
    return sim.success

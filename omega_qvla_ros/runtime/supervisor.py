"""Who drives the arm, tick by tick: the policy, the teleop leader arms, or nobody
(hold). Modes: `policy` (policy drives, teleop is the fallback), `teleop` (pass the
leader arms through), `shadow` (teleop drives, the policy runs and its divergence from
teleop is measured). Actuation is off until enabled (dry run); an e-stop latches until
reset; a lost operator heartbeat, stale inputs, inference errors, deadline misses and
non-finite outputs switch to the fallback (teleop when fresh and allowed, else hold)."""
from __future__ import annotations

from dataclasses import dataclass, field

MODES = ("policy", "teleop", "shadow")


@dataclass
class Inputs:
    now: float
    camera_age: float | None  # seconds since the oldest required camera frame (None: never)
    joint_age: float | None
    teleop_age: float | None
    heartbeat_age: float | None
    policy_fault: str = ""  # last inference error / deadline miss / bad output, "" if fine


@dataclass
class Decision:
    source: str  # "policy" | "teleop" | "hold"
    actuate: bool  # send to the controller
    reason: str  # why not the requested source ("" when all is well)
    run_policy: bool  # keep inferring (policy or shadow)


@dataclass
class Supervisor:
    mode: str = "policy"
    dry_run: bool = True
    stale_after: float = 0.5
    heartbeat_timeout: float = 0.0  # 0 disables the heartbeat requirement
    fallback_to_teleop: bool = True
    estop: bool = False
    estop_reason: str = ""
    history: list[str] = field(default_factory=list)

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    def trigger_estop(self, reason: str = "e-stop") -> None:
        self.estop, self.estop_reason = True, reason

    def reset_estop(self) -> None:
        self.estop, self.estop_reason = False, ""

    def _stale(self, age: float | None) -> bool:
        return age is None or age > self.stale_after

    def decide(self, x: Inputs) -> Decision:
        teleop_ok = not self._stale(x.teleop_age)
        run_policy = self.mode in ("policy", "shadow")
        actuate = not self.dry_run  # dry run: nothing ever reaches the controller
        if self.estop:
            return Decision("hold", actuate, f"e-stop latched ({self.estop_reason})", False)
        if self.heartbeat_timeout > 0 and (x.heartbeat_age is None or x.heartbeat_age > self.heartbeat_timeout):
            return Decision("hold", actuate, "operator heartbeat lost", run_policy)
        if self.mode in ("teleop", "shadow"):
            note = f"shadow policy: {x.policy_fault}" if self.mode == "shadow" and x.policy_fault else ""
            if teleop_ok:
                return Decision("teleop", actuate, note, run_policy)
            return Decision("hold", actuate, "teleop commands stale", run_policy)
        problems = []
        if self._stale(x.camera_age):
            problems.append("camera stale")
        if self._stale(x.joint_age):
            problems.append("joint states stale")
        if x.policy_fault:
            problems.append(x.policy_fault)
        if not problems:
            return Decision("policy", actuate, "", True)
        reason = "; ".join(problems)
        if self.fallback_to_teleop and teleop_ok:
            return Decision("teleop", actuate, f"fallback to teleop: {reason}", True)
        return Decision("hold", actuate, f"hold: {reason}", True)

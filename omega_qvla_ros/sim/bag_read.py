"""Read the node's topics back from a rosbag2 (MCAP or sqlite3) without ROS: frames of
(latest images, joint state, teleop command, instruction) at every joint-state stamp."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from omega_qvla_ros.runtime.preprocess import RawObservation


@dataclass
class BagFrame:
    stamp_ns: int
    observation: RawObservation
    teleop: np.ndarray | None  # the leader-arm command at this stamp (joint order of the bag)


def _camera_of(topic: str) -> str:
    return topic.strip("/").split("/")[0]


class BagError(ValueError):
    """A bag that cannot be replayed; the message says why (one line)."""


def read_frames(bag: str | Path, cameras: list[str], joint_topic: str = "/joint_states",
                teleop_topic: str = "/teleop/joint_states", instruction_topic: str = "/instruction",
                every: int = 1) -> list[BagFrame]:
    """Frames at every `every`-th joint state once every camera has an image. Raises
    BagError for a missing path, an unreadable or empty bag, a bag without the joint
    topic or one of the cameras, or a bag whose frames never hold all cameras."""
    p = Path(bag)
    if not p.exists():
        raise BagError(f"{p}: no such bag (a rosbag2 folder or file)")
    try:
        return _read_frames(p, cameras, joint_topic, teleop_topic, instruction_topic, every)
    except BagError:
        raise
    except Exception as e:  # noqa: BLE001 - rosbags raises many kinds for a corrupt bag
        raise BagError(f"{p}: cannot read the bag ({type(e).__name__}: {' '.join(str(e).split())})") from None


def _read_frames(bag: Path, cameras, joint_topic, teleop_topic, instruction_topic, every) -> list[BagFrame]:
    from rosbags.highlevel import AnyReader
    from rosbags.image import message_to_cvimage
    from rosbags.typesys import Stores, get_typestore

    frames: list[BagFrame] = []
    latest: dict[str, np.ndarray] = {}
    teleop = None
    instruction = ""
    n_js = 0
    with AnyReader([Path(bag)], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as r:
        wanted = [c for c in r.connections if c.topic in (joint_topic, teleop_topic, instruction_topic)
                  or ("Image" in c.msgtype and _camera_of(c.topic) in cameras)]
        if not any(c.topic == joint_topic for c in wanted):
            raise BagError(f"{bag}: no {joint_topic} topic (topics: {sorted({c.topic for c in r.connections})})")
        have = {_camera_of(c.topic) for c in wanted if "Image" in c.msgtype}
        missing = [c for c in cameras if c not in have]
        if missing:
            raise BagError(f"{bag}: no image topic for the model's camera(s) {missing} (image topics: "
                           f"{sorted(c.topic for c in r.connections if 'Image' in c.msgtype)})")
        for conn, ts, raw in r.messages(connections=wanted):
            msg = r.deserialize(raw, conn.msgtype)
            if "Image" in conn.msgtype:
                latest[_camera_of(conn.topic)] = message_to_cvimage(msg, "rgb8")
            elif conn.topic == instruction_topic:
                instruction = msg.data
            elif conn.topic == teleop_topic:
                teleop = np.array(msg.position, dtype=np.float64)
            elif conn.topic == joint_topic:
                n_js += 1
                if (n_js - 1) % every or not all(c in latest for c in cameras):
                    continue
                obs = RawObservation(dict(latest), list(msg.name), np.array(msg.position, dtype=np.float64),
                                     instruction, ts * 1e-9)
                frames.append(BagFrame(ts, obs, teleop))
    if not frames:
        raise BagError(f"{bag}: no joint state arrives after an image of every camera {cameras}")
    return frames

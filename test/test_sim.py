"""Simulator, scripted expert, rosbag2 recording and dataset shards."""
from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("gym_aloha")

from omega_qvla_ros.sim.aloha import INSTRUCTIONS, JOINT_NAMES, AlohaSim  # noqa: E402
from omega_qvla_ros.sim.expert import run_expert_episode  # noqa: E402
from omega_qvla_ros.sim.record import BagRecorder, EpisodeDataset, record_episode, write_shard  # noqa: E402

DEMO_BAG = Path(__file__).parent / "data" / "demo_bag"
CAMS = ("cam_high", "cam_left_wrist", "cam_right_wrist")


@pytest.mark.parametrize("task", ["transfer_cube", "insertion"])
def test_headless_episode_renders_configured_size(task):
    with AlohaSim(task, image_size=64, cameras=CAMS) as sim:
        obs = sim.reset(0)
        for _ in range(5):
            obs = sim.step(np.concatenate([obs.qpos[:7], obs.qpos[7:]]))
        for c in CAMS:
            img = obs.images[c]
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            assert img.std() > 5  # a scene, not a blank buffer
        assert obs.qpos.shape == (14,) and np.all(np.isfinite(obs.qpos))
        with pytest.raises(ValueError):
            sim.step(np.full(14, np.nan))


@pytest.mark.parametrize("task,seeds", [("transfer_cube", [0, 1]), ("insertion", [0, 1])])
def test_scripted_expert_succeeds(task, seeds):
    """Succeeds, and keeps forearm_roll / wrist_rotate near their rest posture: without
    the IK's null-space posture term they drifted to ±π (either sign) at the wrist
    singularity — the same gripper pose over joint paths no policy can learn."""
    with AlohaSim(task, render=False) as sim:
        for s in seeds:
            acts = []
            assert run_expert_episode(sim, s, on_step=lambda t, o, a: acts.append(a)), (task, s)
            rolls = np.abs(np.array(acts)[:, [3, 5, 10, 12]])
            assert rolls.max() < 1.6, (task, s, rolls.max(0))  # measured ≤ 1.4 over 30 seeds


def test_table_camera_is_added_without_changing_the_scene():
    """`cam_table` (the top camera with a narrower lens, mounted through MjSpec) renders
    the cube larger, while physics and the shipped cameras stay bit-equal to the scene
    loaded as gym-aloha ships it."""
    def red_pixels(img):
        return int(((img[..., 0] > 150) & (img[..., 1] < 80)).sum())

    with AlohaSim("transfer_cube", image_size=96, cameras=("cam_high", "cam_table")) as a, \
            AlohaSim("transfer_cube", image_size=96, cameras=("cam_high",)) as b:
        oa, ob = a.reset(100000), b.reset(100000)
        act = np.concatenate([oa.qpos[:7] + 0.05, oa.qpos[7:]])
        for _ in range(10):
            oa, ob = a.step(act), b.step(act)
        assert np.array_equal(oa.qpos, ob.qpos) and np.array_equal(oa.images["cam_high"], ob.images["cam_high"])
        assert a.model.ncam == b.model.ncam + 1
        assert red_pixels(oa.images["cam_table"]) >= 1.8 * red_pixels(oa.images["cam_high"]) > 0


def test_object_poses_randomised_per_seed():
    with AlohaSim("transfer_cube", render=False) as sim:
        sim.reset(3)
        a = sim.object_pose.copy()
        sim.reset(4)
        assert not np.allclose(a, sim.object_pose)
        sim.reset(3)
        assert np.allclose(a, sim.object_pose)


@pytest.fixture(scope="module")
def short_episodes():
    eps = []
    for task in ("transfer_cube", "insertion"):
        with AlohaSim(task, image_size=48, cameras=("cam_high", "cam_left_wrist")) as sim:
            eps.append(record_episode(sim, seed=5, steps=30))
    return eps


def _read_bag(path):
    from rosbags.highlevel import AnyReader
    from rosbags.image import message_to_cvimage
    from rosbags.typesys import Stores, get_typestore

    out: dict[str, list] = {}
    with AnyReader([Path(path)], default_typestore=get_typestore(Stores.ROS2_HUMBLE)) as r:
        types = {c.topic: c.msgtype for c in r.connections}
        for conn, ts, raw in r.messages():
            msg = r.deserialize(raw, conn.msgtype)
            if "Image" in conn.msgtype:
                msg = (msg, message_to_cvimage(msg, "rgb8"))
            out.setdefault(conn.topic, []).append((ts, msg))
    return types, out


@pytest.mark.parametrize("storage,compress", [("mcap", False), ("sqlite3", True)])
def test_bag_reads_back(short_episodes, tmp_path, storage, compress):
    with BagRecorder(tmp_path / "bag", storage=storage, compress_images=compress) as bag:
        t0s = [bag.write_episode(e) for e in short_episodes]
    types, msgs = _read_bag(tmp_path / "bag")
    img_topic = "/cam_high/image_raw/compressed" if compress else "/cam_high/image_raw"
    assert types["/joint_states"] == "sensor_msgs/msg/JointState"
    assert types["/teleop/joint_states"] == "sensor_msgs/msg/JointState"
    assert types["/instruction"] == "std_msgs/msg/String"
    assert types["/clock"] == "rosgraph_msgs/msg/Clock"
    assert types[img_topic] == ("sensor_msgs/msg/CompressedImage" if compress else "sensor_msgs/msg/Image")
    n = sum(e.length for e in short_episodes)
    for topic in ("/joint_states", "/teleop/joint_states", "/clock", img_topic,
                  img_topic.replace("cam_high", "cam_left_wrist")):
        assert len(msgs[topic]) == n, topic
    assert [m.data for _, m in msgs["/instruction"]] == [INSTRUCTIONS["transfer_cube"], INSTRUCTIONS["insertion"]]
    stamps = [ts for ts, _ in msgs["/joint_states"]]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert t0s[1] > stamps[short_episodes[0].length - 1]
    for ts, m in msgs["/joint_states"]:
        assert list(m.name) == JOINT_NAMES and len(m.position) == 14 and len(m.velocity) == 14
        assert m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == ts
    clock = [m.clock.sec * 10**9 + m.clock.nanosec for _, m in msgs["/clock"]]
    assert clock == stamps
    ep = short_episodes[0]
    for i in (0, ep.length - 1):
        (_, (_, img)) = msgs[img_topic][i]
        assert img.shape == (48, 48, 3)
        diff = np.abs(img.astype(int) - ep.images["cam_high"][i].astype(int)).mean()
        assert diff < (6 if compress else 1e-9)
        np.testing.assert_allclose(msgs["/teleop/joint_states"][i][1].position, ep.actions[i], rtol=1e-6)


def test_dataset_matches_bag(short_episodes, tmp_path):
    with BagRecorder(tmp_path / "bag") as bag:
        for e in short_episodes:
            bag.write_episode(e)
    write_shard(short_episodes, tmp_path / "shard.safetensors")
    ds = EpisodeDataset([tmp_path / "shard.safetensors"], only_success=False)
    assert len(ds) == sum(e.length for e in short_episodes)
    assert ds.cameras == ["cam_high", "cam_left_wrist"]
    _, msgs = _read_bag(tmp_path / "bag")
    for i, (_, js) in enumerate(msgs["/joint_states"]):
        np.testing.assert_allclose(ds.data["state"][i], js.position, rtol=1e-6)
        np.testing.assert_allclose(ds.data["actions"][i], msgs["/teleop/joint_states"][i][1].position, rtol=1e-6)
        assert np.array_equal(ds.data["images.cam_high"][i], msgs["/cam_high/image_raw"][i][1][1])
    f = ds.frame(35)
    assert f["instruction"] == INSTRUCTIONS["insertion"] and int(f["frame_index"]) == 5
    chunk = ds.action_chunk(25, 10)  # crosses the episode end: last action repeated
    assert chunk.shape == (10, 14)
    np.testing.assert_allclose(chunk[5:], np.repeat(ds.data["actions"][29][None], 5, 0))


def test_demo_bag_is_committed_and_readable():
    assert (DEMO_BAG / "metadata.yaml").is_file()
    size = sum(f.stat().st_size for f in DEMO_BAG.rglob("*") if f.is_file())
    assert size < 8 * 2**20
    types, msgs = _read_bag(DEMO_BAG)
    assert len(msgs["/instruction"]) == 2
    assert len(msgs["/joint_states"]) == 800
    for c in CAMS:
        assert len(msgs[f"/{c}/image_raw/compressed"]) == 800
    _, img = msgs["/cam_high/image_raw/compressed"][0][1]
    assert img.shape == (96, 96, 3)


def test_train_resumes_from_checkpoint(short_episodes, tmp_path, capsys):
    """`omega-qvla train` on a tiny model: checkpoints, resumes at the saved step, and the
    checkpoint imports into a pack through the name-mapping importer."""
    import json as _json

    from omega_qvla_ros.tools.cli import main

    shard = write_shard(short_episodes, tmp_path / "shard.safetensors")
    ds_cams = EpisodeDataset([shard], only_success=False).cameras
    assert ds_cams == ["cam_high", "cam_left_wrist"]
    # tiny GR00T takes 2 cameras, the two this shard holds
    args = ["train", "--family", "gr00t", "--size", "tiny", "--data", str(shard), "--out", str(tmp_path / "run"),
            "--steps", "4", "--batch", "2", "--checkpoint-every", "2", "--include-failed", "--json"]
    assert main(args) == 0  # the 30-step episodes are not successes, hence --include-failed
    st = _json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert st["step"] == 4
    args[args.index("--steps") + 1] = "6"
    assert main(args) == 0
    st = _json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert st["step"] == 6
    from omega_qvla_ros.models import build_model
    from omega_qvla_ros.models.importer import import_checkpoint
    rep = import_checkpoint(build_model("gr00t", "tiny"), tmp_path / "run" / "checkpoint" / "model.safetensors")
    assert rep.missing == [] and rep.unmapped == []
    # export: an fp16 pack with the data's normalisation, the cameras and the training record
    assert main(args + ["--export", str(tmp_path / "fp")]) == 0
    man = _json.loads((tmp_path / "fp" / "manifest.json").read_text())
    robot, training, proc = man["extra"]["robot"], man["extra"]["training"], man["processor"]
    assert man["recipe"]["name"] == "fp16" and proc["cameras"] == ["cam_high", "cam_left_wrist"]
    assert proc["state_norm"] == proc["action_norm"] and proc["state_norm"]["mode"] == "min_max"
    span = np.subtract(proc["state_norm"]["high"], proc["state_norm"]["low"])
    assert np.all(span < np.subtract(robot["upper"], robot["lower"]) + 1e-9) and span[0] < 1.0
    assert training["steps"] == 6 and training["data"]["episodes"] == 2 and len(training["commands"]) == 3
    # a resumed run with another normalisation (other data) is refused
    one = write_shard(short_episodes[:1], tmp_path / "one.safetensors")
    assert main(["train", "--family", "gr00t", "--size", "tiny", "--data", str(one), "--out", str(tmp_path / "run"),
                 "--steps", "8", "--batch", "2", "--include-failed", "--json"]) == 1
    err = capsys.readouterr().err
    assert "normalisation" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    # … unless the checkpoint's normalisation is kept (fine-tuning on added data)
    assert main(["train", "--family", "gr00t", "--size", "tiny", "--data", str(one), str(shard),
                 "--out", str(tmp_path / "run"), "--steps", "8", "--batch", "2", "--include-failed",
                 "--keep-normalisation", "--json"]) == 0
    st = _json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert st["step"] == 8 and st["robot"] == robot
    assert main(["train", "--family", "gr00t", "--size", "tiny", "--data", str(one), "--out", str(tmp_path / "new"),
                 "--steps", "1", "--batch", "2", "--include-failed", "--keep-normalisation", "--json"]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    # --cameras picks the data's cameras the model reads, in order; a wrong count is one line
    assert main(["train", "--family", "gr00t", "--size", "tiny", "--data", str(shard), "--out", str(tmp_path / "cams"),
                 "--steps", "1", "--batch", "2", "--include-failed", "--cameras", "cam_left_wrist,cam_high",
                 "--export", str(tmp_path / "fp_cams"), "--json"]) == 0
    man = _json.loads((tmp_path / "fp_cams" / "manifest.json").read_text())
    assert man["processor"]["cameras"] == man["extra"]["cameras"] == ["cam_left_wrist", "cam_high"]
    assert main(["train", "--family", "gr00t", "--size", "tiny", "--data", str(shard), "--out", str(tmp_path / "c1"),
                 "--steps", "1", "--batch", "2", "--include-failed", "--cameras", "cam_high", "--json"]) != 0
    err = capsys.readouterr().err
    assert "reads 2 camera(s)" in err and len(err.strip().splitlines()) == 1


def test_train_starts_from_another_models_frozen_vision_tower(short_episodes, tmp_path, capsys):
    """`train --init-vision-from PACK --freeze-vision`: a fresh GR00T run starts with the
    Pi0.5 pack's tower, keeps it unchanged through training, and records it."""
    import json as _json

    import torch
    from safetensors.torch import load_file

    from omega_qvla_ros.models import build_model, model_info
    from omega_qvla_ros.quant import RECIPES, save_pack
    from omega_qvla_ros.tools.cli import main

    src = build_model("pi05", "tiny", seed=3)
    save_pack(src, tmp_path / "src", model_info(src, "tiny"), recipe=RECIPES["fp16"].to_dict(),
              float_dtype=torch.float16)
    shard = write_shard(short_episodes, tmp_path / "shard.safetensors")
    assert main(["train", "--family", "gr00t", "--size", "tiny", "--data", str(shard), "--out", str(tmp_path / "run"),
                 "--steps", "3", "--batch", "2", "--lr", "1e-2", "--include-failed", "--init-vision-from",
                 str(tmp_path / "src"), "--freeze-vision", "--export", str(tmp_path / "fp"), "--json"]) == 0
    ck = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    want = {k.split("vision_tower.", 1)[1]: v for k, v in src.state_dict().items() if "vision_tower." in k}
    got = {k.split("eagle_model.vision_model.", 1)[1]: v for k, v in ck.items() if "eagle_model.vision_model." in k}
    assert sorted(got) == sorted(want)
    for k, v in want.items():  # the pack holds fp16; frozen: not moved by three lr-1e-2 steps
        torch.testing.assert_close(got[k], v.half().float(), rtol=0, atol=0)
    fresh = build_model("gr00t", "tiny", seed=0).state_dict()
    moved = [k for k, v in ck.items() if "action_head.model." in k and not torch.equal(v, fresh[k])]
    assert moved  # the rest trained
    vision = _json.loads((tmp_path / "fp" / "manifest.json").read_text())["extra"]["training"]["data"]["vision"]
    assert vision["init_tensors"] == len(want) and vision["frozen_parameters"] > 0
    # a quantized pack is not a source of FP weights
    save_pack(src, tmp_path / "q", model_info(src, "tiny"), recipe=RECIPES["rtn"].to_dict())
    assert main(["train", "--family", "gr00t", "--size", "tiny", "--data", str(shard), "--out", str(tmp_path / "r2"),
                 "--steps", "1", "--batch", "2", "--include-failed", "--init-vision-from", str(tmp_path / "q"),
                 "--json"]) == 1
    assert "quantized pack" in capsys.readouterr().err


def test_eval_json_shape_and_seeds(tmp_path):
    """`omega-qvla eval` (random tiny model, one short task run): the documented JSON, the
    same seeds for every recipe, calibration observations counted."""
    import json as _json

    from omega_qvla_ros.tools.cli import main

    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "random:pi05:tiny", "--recipes", "fp16,omega_qvla_int", "--tasks",
                 "transfer_cube", "--episodes", "1", "--calib-episodes", "1", "--calib-frames", "2",
                 "--calib-seed", "90500", "--out", str(out), "--json"]) == 0
    r = _json.loads(out.read_text())
    for recipe in ("fp16", "omega_qvla_int"):
        e = r[recipe]["transfer_cube"]
        assert e["episodes"] == 1 and e["successes"] == 0 and e["success_rate"] == 0.0
        assert e["ci95"][0] == 0.0 and 0.5 < e["ci95"][1] < 1.0 and len(e["max_rewards"]) == 1
    meta = r["_meta"]
    assert meta["eval_seeds"] == [100000, 100000] and meta["calibration"]["observations"] == 2
    assert meta["calibration"]["seeds"] == [90500, 90500]
    assert meta["family"] == "pi05" and meta["model"] == "random:pi05:tiny"
    assert meta["execute_horizon"] == meta["replan_every"] == 10  # tiny chunks: 10 actions, executed whole


def test_eval_refuses_calibration_seeds_among_the_evaluation_seeds(capsys):
    from omega_qvla_ros.tools.cli import main

    assert main(["eval", "--model", "random:pi05:tiny", "--episodes", "20", "--calib-seed", "100019"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overlap the evaluation seeds 100000-100019" in err[0]


def test_eval_workers_split_the_episodes_of_one_task(tmp_path):
    """--workers splits one task's episodes (worker k of n runs k, k+n, …) and the merged
    result counts every episode once, in seed order."""
    import json as _json

    from omega_qvla_ros.tools.cli import main
    from omega_qvla_ros.tools.eval_cmd import evaluate

    part = evaluate("random:pi05:tiny", 0, ["fp16"], ["transfer_cube"], ["transfer_cube"], episodes=3,
                    first_seed=100000, calib_episodes=1, calib_frames=1, execute_horizon=10, threads=1,
                    log=False, shard=(1, 2))
    assert list(part["result"]["fp16"]["transfer_cube"]) == [1]
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", "random:pi05:tiny", "--recipes", "fp16", "--tasks", "transfer_cube",
                 "--episodes", "3", "--workers", "2", "--calib-episodes", "1", "--calib-frames", "1",
                 "--out", str(out), "--json"]) == 0
    e = _json.loads(out.read_text())["fp16"]["transfer_cube"]
    assert e["episodes"] == 3 and len(e["max_rewards"]) == 3


def test_on_policy_calibration_takes_the_policys_own_states():
    """--calib-source policy: observations come from the FP policy's closed-loop rollouts
    (evenly spaced among its inference times), not from the expert's episode."""
    from omega_qvla_ros.sim.closed_loop import on_policy_observations
    from omega_qvla_ros.tools.eval_cmd import calibration_observations
    from omega_qvla_ros.tools.model_source import load_fp_model

    pol = load_fp_model("random:pi05:tiny").policy()
    episodes = on_policy_observations(pol, "transfer_cube", [90000], execute_horizon=10)
    assert len(episodes) == 1 and len(episodes[0]) == 40  # 400 steps, a chunk every 10
    # the controller's scheduling passes through: a chunk every 8 steps, overlaps blended
    blended = on_policy_observations(pol, "transfer_cube", [90000], execute_horizon=10, replan_every=8,
                                     blend="average")
    assert len(blended[0]) == 50
    ours = calibration_observations(pol, ["transfer_cube"], 1, 3, source="policy", execute_horizon=10,
                                    replan_every=8, blend="average")
    want = [pol.processor.observation(blended[0][i][0])[0] for i in (0, 24, 49)]
    assert len(ours) == 3 and all(torch.equal(a.state, b.state) for a, b in zip(ours, want))
    ours = calibration_observations(pol, ["transfer_cube"], 1, 3, source="policy", execute_horizon=10)
    want = [pol.processor.observation(episodes[0][i][0])[0] for i in (0, 20, 39)]
    assert len(ours) == 3 and all(torch.equal(a.state, b.state) for a, b in zip(ours, want))
    expert = calibration_observations(pol, ["transfer_cube"], 1, 3)
    assert not torch.equal(ours[-1].state, expert[-1].state)  # the random policy goes elsewhere
    with pytest.raises(ValueError, match="calibration source"):
        calibration_observations(pol, ["transfer_cube"], 1, 3, source="dreams")


def test_closed_loop_runs_policy_through_the_runtime(tmp_path):
    """A (random) tiny policy drives the simulator through the scheduler and safety filter;
    chunks are requested every execute_horizon steps; the Wilson interval is right."""
    from omega_qvla_ros.sim.closed_loop import run_policy_episode, wilson_ci95
    from omega_qvla_ros.tools.model_source import load_fp_model

    pol = load_fp_model("random:pi05:tiny").policy()
    with AlohaSim("transfer_cube", image_size=64, cameras=tuple(pol.cameras)) as sim:
        r = run_policy_episode(pol, sim, seed=3, execute_horizon=5, steps=20)
        q = sim.qpos()
        # replanning every 2 steps: 10 chunks, merged by the blend instead of replacing
        r2 = run_policy_episode(pol, sim, seed=3, execute_horizon=5, steps=20, replan_every=2, blend="average")
        # --noise-scale multiplies each chunk's starting noise (0: the prior's mean)
        seen = {}

        class Spy:
            def __getattr__(self, name):
                return getattr(pol, name)

            def infer(self, raw, noise=None):
                seen.setdefault(scale, []).append(noise.clone())
                return pol.infer(raw, noise=noise)

        for scale in (1.0, 0.5, 0.0):
            run_policy_episode(Spy(), sim, seed=3, execute_horizon=5, steps=10, noise_scale=scale)
    assert r["chunks"] == 4 and r["success"] is False
    assert r2["chunks"] == 10
    assert len(seen[1.0]) == 2 and seen[1.0][0].abs().max() > 0
    assert all(torch.equal(a * 0.5, b) for a, b in zip(seen[1.0], seen[0.5]))
    assert all(not z.any() for z in seen[0.0])
    assert np.all(np.isfinite(q))
    lo, hi = wilson_ci95(45, 50)
    assert 0.78 < lo < 0.80 and 0.95 < hi < 0.97
    assert wilson_ci95(0, 10)[0] == 0.0


def test_replay_offline_and_live(tmp_path):
    """`omega-qvla replay` on the demo bag with a tiny random model: offline comparison of
    recipes and live through the node process (shadow mode, loopback DDS)."""
    import json as _json

    from omega_qvla_ros.tools.cli import main

    pack = tmp_path / "pack"
    assert main(["quantize", "--model", "random:pi05:tiny", "--recipe", "omega_qvla",
                 "--calib", str(DEMO_BAG), "--calib-batches", "2", "--out", str(pack), "--json"]) == 0
    assert main(["replay", str(DEMO_BAG), "--model", "random:pi05:tiny", "--compare", "fp16,omega_qvla",
                 "--every", "50", "--calib-batches", "2", "--live", "--pack", str(pack), "--rate", "4",
                 "--report", str(tmp_path / "rep"), "--json"]) == 0
    r = _json.loads((tmp_path / "rep" / "report.json").read_text())
    off = r["offline"]["recipes"]
    assert off["fp16"]["action_rel_mse_vs_fp"] == 0.0 and 0 < off["omega_qvla"]["action_rel_mse_vs_fp"] < 1
    assert off["omega_qvla"]["teleop_divergence_mean_rad"] > 0 and off["omega_qvla"]["inference_ms_p50"] > 0
    live = r["live"]
    assert live["chunks"] >= 1 and live["final_status"]["mode"] == "shadow"
    assert live["final_status"]["dry_run"] is True
    assert (tmp_path / "rep" / "report.md").read_text().startswith("# Replay of")


def test_sparse_camera_frames_in_bag_and_dataset(tmp_path):
    """`image_every=4`: joints and actions on every frame, images (rendered only then) on
    frames 0, 4, 8, …; the bag carries them at those stamps and the dataset samples only
    frames that have one, with the action chunk still taken frame by frame."""
    from omega_qvla_ros.sim.aloha import DT
    from omega_qvla_ros.sim.record import EPISODE_GAP_NS

    with AlohaSim("transfer_cube", image_size=48, cameras=("cam_high",)) as sim:
        dense = record_episode(sim, seed=5, steps=21)
        sparse = record_episode(sim, seed=5, steps=21, image_every=4)
        other = record_episode(sim, seed=6, steps=10, image_every=4)
    assert list(sparse.image_frames) == [0, 4, 8, 12, 16, 20]
    assert sparse.images["cam_high"].shape == (6, 48, 48, 3)
    # same physics: the skipped renders change nothing else
    assert np.array_equal(dense.qpos, sparse.qpos) and np.array_equal(dense.actions, sparse.actions)
    assert np.array_equal(dense.images["cam_high"][8], sparse.images["cam_high"][2])
    with BagRecorder(tmp_path / "bag") as bag:
        bag.write_episode(sparse)
    _, msgs = _read_bag(tmp_path / "bag")
    stamps = [ts for ts, _ in msgs["/cam_high/image_raw"]]
    assert stamps == [int(round(f * DT * 1e9)) for f in sparse.image_frames]
    assert len(msgs["/joint_states"]) == 21 and EPISODE_GAP_NS > 0
    write_shard([sparse, other], tmp_path / "shard.safetensors")
    ds = EpisodeDataset([tmp_path / "shard.safetensors"], only_success=False)
    assert len(ds) == 31 and list(ds.image_rows) == [0, 4, 8, 12, 16, 20, 21, 25, 29]
    assert np.array_equal(ds.image("cam_high", np.array([25])), other.images["cam_high"][1:2])
    assert np.array_equal(ds.action_chunk(16, 8), sparse.actions[[16, 17, 18, 19, 20, 20, 20, 20]])
    assert ds.frame(5)["images.cam_high"] is None
    with pytest.raises(IndexError):
        ds.image("cam_high", np.array([5]))


def test_action_perturbation_statistics():
    """Stationary std ≈ sigma on the arm joints, grippers untouched, correlated over tau."""
    from omega_qvla_ros.sim.expert import ActionPerturbation

    p = ActionPerturbation(0.03, tau=0.5, seed=1)
    zeros = np.zeros(14)
    x = np.array([p(zeros) for _ in range(30000)])[1000:]
    assert np.all(x[:, [6, 13]] == 0)
    std = x[:, ActionPerturbation.ARM].std(0)
    assert np.all(np.abs(std - 0.03) < 0.006), std
    lag = np.mean([np.corrcoef(x[:-25, j], x[25:, j])[0, 1] for j in ActionPerturbation.ARM])
    assert abs(lag - np.exp(-0.5 / 0.5)) < 0.1  # 25 steps = 0.5 s = one tau
    with pytest.raises(ValueError):
        ActionPerturbation(0.01, tau=0)


def test_perturbed_recording_keeps_expert_labels(tmp_path):
    """DART-style recording: the executed joints leave the expert's path, the recorded
    actions are still the expert's commands (identical to the clean run's)."""
    with AlohaSim("transfer_cube", render=False) as sim:
        clean = record_episode(sim, seed=5, steps=80)
        noisy = record_episode(sim, seed=5, steps=80, action_noise=0.03)
    assert np.array_equal(clean.actions, noisy.actions)
    dev = np.abs(noisy.qpos[40:] - clean.qpos[40:])[:, [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12]]
    assert dev.mean() > 0.005  # measured ≈ 0.02 rad
    write_shard([noisy], tmp_path / "s.safetensors")
    ds = EpisodeDataset([tmp_path / "s.safetensors"], only_success=False)
    assert ds.episodes[0]["action_noise"] == 0.03


def test_recorded_eval_command_spells_out_its_calibration(monkeypatch):
    """A recorded command must say what ran when the calibration size came from defaults
    (they changed once: 2 × 5 observations, then 4 × 10)."""
    import argparse

    from omega_qvla_ros.tools.eval_cmd import command_line

    args = argparse.Namespace(calib_episodes=4, calib_frames=10)
    monkeypatch.setattr("sys.argv", ["/x/bin/omega-qvla", "eval", "--episodes", "3"])
    assert command_line(args) == "omega-qvla eval --episodes 3 --calib-episodes 4 --calib-frames 10"
    monkeypatch.setattr("sys.argv", ["/x/bin/omega-qvla", "eval", "--calib-episodes=4", "--calib-frames", "10"])
    assert command_line(args) == "omega-qvla eval --calib-episodes=4 --calib-frames 10"
    monkeypatch.setattr("sys.argv", ["pytest"])
    assert command_line(args) is None

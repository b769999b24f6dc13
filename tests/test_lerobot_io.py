"""LeRobot v3.0 I/O: our round trip, exact stats, atomic writes, and compatibility both ways
with the real `lerobot` package (installed --no-deps into a cached folder, run in a subprocess)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from harness.data import Episode, open_dataset, write_dataset
from harness.data.lerobot import DatasetWriter
from harness.errors import UserError

REPO = Path(__file__).resolve().parents[1]
LENGTHS = (6, 9, 4)
VIDEO_MAE_BOUND = 3.0  # h264 crf 18 yuv420p on these smooth ramps: ~1.5 levels of 255 measured


def make_episodes(lengths=LENGTHS, h=32, w=48):
    """Generator (as demo writers are) of episodes with smooth, distinct images per frame."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    for e, T in enumerate(lengths):
        t = np.arange(T)[:, None, None]
        img = np.stack([xx + t * 25,  # smooth ramps, no wrap-around: all values < 256
                        yy * 2 + t * 15 + e * 20,
                        np.broadcast_to((xx + yy) * 2 + e * 20, (T, h, w))], -1).astype(np.uint8)
        yield Episode(task=f"pick block {e % 2}",
                      state=rng.normal(size=(T, 5)).astype(np.float32) * 3 + 1,
                      action=rng.normal(size=(T, 3)).astype(np.float32),
                      images={"front": img, "wrist": img[:, ::-1].copy()},
                      extra={"seed": 100 + e})


@pytest.fixture(scope="module", params=[True, False], ids=["video", "image"])
def written(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("ds") / "demos"
    write_dataset(root, make_episodes(), fps=10, video=request.param, info_extra={"suite": "t"})
    return request.param, root


def test_round_trip(written):
    video, root = written
    data = open_dataset(root)
    assert data.num_episodes == len(LENGTHS) and data.fps == 10.0
    assert data.camera_names == ["front", "wrist"]
    assert data.tasks == ["pick block 0", "pick block 1"]
    assert (data.state_dim, data.action_dim) == (5, 3)
    assert data.info_extra == {"suite": "t"} and data.info["codebase_version"] == "v3.0"
    assert data.info["total_frames"] == sum(LENGTHS)
    for want, got in zip(make_episodes(), data.episodes(), strict=True):
        assert got.task == want.task and got.extra == want.extra
        np.testing.assert_array_equal(got.state, want.state)
        np.testing.assert_array_equal(got.action, want.action)
        for cam in ("front", "wrist"):
            assert got.images[cam].shape == want.images[cam].shape
            assert got.images[cam].dtype == np.uint8
            err = np.abs(got.images[cam].astype(int) - want.images[cam]).mean()
            if video:
                assert err < VIDEO_MAE_BOUND, f"{cam}: mean abs error {err:.2f}"
            else:
                assert err == 0
    # the bound tells frames apart: a decoder one frame off would fail it
    got, want = data.episode(1).images["front"], list(make_episodes())[1].images["front"]
    assert np.abs(got[1:].astype(int) - want[:-1]).mean() > 2 * VIDEO_MAE_BOUND


def test_stats_equal_numpy(written):
    _, root = written
    stats = open_dataset(root).stats
    eps = list(make_episodes())
    state = np.concatenate([e.state for e in eps]).astype(np.float64)
    np.testing.assert_allclose(stats["observation.state"]["mean"], state.mean(0), rtol=1e-9)
    np.testing.assert_allclose(stats["observation.state"]["std"], state.std(0), rtol=1e-9)
    np.testing.assert_array_equal(stats["observation.state"]["min"], state.min(0))
    np.testing.assert_array_equal(stats["observation.state"]["count"], [sum(LENGTHS)])
    action = np.concatenate([e.action for e in eps]).astype(np.float64)
    np.testing.assert_allclose(stats["action"]["max"], action.max(0))
    np.testing.assert_allclose(stats["action"]["std"], action.std(0), rtol=1e-9)
    img = np.concatenate([e.images["front"] for e in eps]) / 255.0
    front = stats["observation.images.front"]
    assert front["mean"].shape == (3, 1, 1)  # lerobot's layout for image stats
    np.testing.assert_allclose(front["mean"][:, 0, 0], img.mean((0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(front["std"][:, 0, 0], img.std((0, 1, 2)), rtol=1e-9)
    np.testing.assert_allclose(stats["frame_index"]["max"], [max(LENGTHS) - 1])


def test_layout_files(written):
    video, root = written
    assert (root / "data/chunk-000/file-000.parquet").is_file()
    assert (root / "meta/episodes/chunk-000/file-000.parquet").is_file()
    assert (root / "videos/observation.images.front/chunk-000/file-000.mp4").is_file() == video
    rows = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [r["length"] for r in rows] == list(LENGTHS)
    assert [r["dataset_to_index"] for r in rows] == list(np.cumsum(LENGTHS))
    frames = pq.read_table(root / "data/chunk-000/file-000.parquet").to_pydict()
    assert frames["index"] == list(range(sum(LENGTHS)))
    assert not list(root.parent.glob("demos.tmp-*"))


def test_missing_dataset_is_user_error(tmp_path):
    with pytest.raises(UserError, match=r"not a LeRobot dataset \(no meta/info.json\).*wam-bench demos"):
        open_dataset(tmp_path / "nope")


def test_failed_write_leaves_nothing(tmp_path):
    def bad():
        yield from make_episodes((3,))
        yield Episode(task="x", state=np.zeros((4, 5), np.float32), action=np.zeros((3, 3), np.float32),
                      images={})
    with pytest.raises(UserError, match="episode 1"):
        write_dataset(tmp_path / "d", bad(), fps=10)
    assert list(tmp_path.iterdir()) == []


def test_existing_root_needs_overwrite(tmp_path):
    root = write_dataset(tmp_path / "d", make_episodes((3,)), fps=10, video=False)
    with pytest.raises(UserError, match="already exists"):
        write_dataset(root, make_episodes((2,)), fps=10)
    write_dataset(root, make_episodes((2, 2)), fps=10, video=False, overwrite=True)
    assert open_dataset(root).num_episodes == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_camera_map(written):
    _, root = written
    data = open_dataset(root, camera_map={"observation.images.wrist": "hand"})
    assert data.camera_names == ["hand"]
    assert list(data.episode(0).images) == ["hand"]
    with pytest.raises(UserError, match="camera_map"):
        open_dataset(root, camera_map={"observation.images.image": "front"})


# --------------------------------------------------------------------------- real lerobot

COMPAT_DIR = REPO / ".venv" / "lerobot-compat"
COMPAT_PINS = [  # lerobot's dataset module and the pure-Python packages it imports, all --no-deps
    "lerobot==0.4.4", "torchvision==0.25.0", "datasets==4.8.5", "huggingface_hub==0.35.3",
    "accelerate==1.15.0", "requests==2.34.2", "urllib3==2.8.0", "idna==3.20",
    "certifi==2026.10.18", "charset_normalizer==3.5.2", "dill==0.4.1", "multiprocess==0.70.19",
    "xxhash==4.1.0", "psutil==7.2.2", "httpx==0.28.1", "httpcore==1.0.9", "h11==0.16.0",
    "anyio==4.16.0", "sniffio==1.3.1",
]

# Runs with the compat folder on sys.path. torchvision's wheel is a CUDA build whose C ops do not
# load beside CPU torch 2.13; lerobot only needs its pure-Python parts (transforms.ToTensor,
# io.VideoReader with the pyav backend), so the fake-op registrations are skipped.
COMPAT_SCRIPT = r"""
import json, sys, types
sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
import numpy as np
from lerobot.datasets.lerobot_dataset import LeRobotDataset

out = {}
for name in sys.argv[1:3]:  # our datasets: read them with lerobot
    ds = LeRobotDataset(repo_id="local/ours", root=name, video_backend="pyav")
    item = ds[ds.num_frames - 1]
    out[name] = {"frames": ds.num_frames, "episodes": ds.num_episodes,
                 "actions": np.stack([ds.hf_dataset[i]["action"].numpy()
                                      for i in range(ds.num_frames)]).tolist(),
                 "task": item["task"], "image": item["observation.images.front"].numpy().tolist()}
feats = {"observation.state": {"dtype": "float32", "shape": (2,), "names": None},
         "action": {"dtype": "float32", "shape": (2,), "names": None},
         "observation.images.front": {"dtype": "video", "shape": (16, 24, 3),
                                      "names": ["height", "width", "channels"]}}
ds = LeRobotDataset.create(repo_id="local/theirs", fps=10, root=sys.argv[3], features=feats,
                           use_videos=True, vcodec="h264")
for e, T in enumerate((4, 6)):
    for t in range(T):
        ds.add_frame({"observation.state": np.array([e, t], np.float32),
                      "action": np.array([t, 10 * e], np.float32),
                      "observation.images.front": np.full((16, 24, 3), 20 * t + 100 * e, np.uint8),
                      "task": f"their task {e}"})
    ds.save_episode()
if hasattr(ds, "finalize"):
    ds.finalize()
print("RESULT " + json.dumps(out))
"""


def _compat_env() -> dict:
    """Install the pinned lerobot set once into .venv/lerobot-compat; a failed install fails the
    test (one line naming it), never a skip that reads as a pass."""
    stamp = COMPAT_DIR / ".installed"
    if not stamp.is_file() or stamp.read_text() != "\n".join(COMPAT_PINS):
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--upgrade",
             "--target", str(COMPAT_DIR), *COMPAT_PINS],
            capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
            pytest.fail(f"cannot pip-install the pinned lerobot set ({COMPAT_PINS[0]} and {len(COMPAT_PINS) - 1} more) "
                        f"--no-deps into {COMPAT_DIR} "
                        f"(this test needs PyPI once): {last}", pytrace=False)
        stamp.write_text("\n".join(COMPAT_PINS))
    return {"PYTHONPATH": str(COMPAT_DIR), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _write_in_segments(root, episodes, fps, every=2):
    """As `wam-bench demos` writes: new data and video files every `every` episodes."""
    writer = DatasetWriter(root, fps)
    for i, ep in enumerate(episodes):
        writer.append(ep)
        if i % every == every - 1:
            writer.roll()
    writer.finish()
    return root


def test_lerobot_compat(tmp_path):
    """lerobot reads ours (the mp4 one in two files per feature, as `demos` segments it) and we read theirs."""
    env = {**os.environ, **_compat_env(), "HF_HOME": str(tmp_path / "hf")}
    ours = {True: _write_in_segments(tmp_path / "ours-True", make_episodes(), fps=10),
            False: write_dataset(tmp_path / "ours-False", make_episodes(), fps=10, video=False)}
    assert len(list((ours[True] / "videos" / "observation.images.front").rglob("*.mp4"))) == 2
    theirs = tmp_path / "theirs"
    proc = subprocess.run([sys.executable, "-c", COMPAT_SCRIPT, str(ours[True]), str(ours[False]),
                           str(theirs)], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])

    eps = list(make_episodes())
    want_actions = np.concatenate([e.action for e in eps])
    last_image = eps[-1].images["front"][-1].transpose(2, 0, 1) / 255.0
    for video, root in ours.items():
        got = result[str(root)]
        assert (got["frames"], got["episodes"]) == (sum(LENGTHS), len(LENGTHS))
        np.testing.assert_array_equal(np.asarray(got["actions"], np.float32), want_actions)
        assert got["task"] == eps[-1].task
        err = np.abs(np.asarray(got["image"]) - last_image).mean() * 255
        assert err < (VIDEO_MAE_BOUND if video else 1e-3), f"video={video}: error {err:.2f}"

    data = open_dataset(theirs)
    assert data.num_episodes == 2 and data.tasks == ["their task 0", "their task 1"]
    for e, (T, ep) in enumerate(zip((4, 6), data.episodes())):
        assert ep.task == f"their task {e}"
        np.testing.assert_array_equal(ep.action, np.stack([np.arange(T), np.full(T, 10 * e)], 1))
        np.testing.assert_array_equal(ep.state[:, 1], np.arange(T))
        want = (20 * np.arange(T) + 100 * e)[:, None, None, None]
        assert np.abs(ep.images["front"].astype(int) - want).max() <= 3
    np.testing.assert_allclose(data.stats["action"]["max"], [5, 10])

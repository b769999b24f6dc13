"""Test-wide settings: offscreen MuJoCo rendering, one torch thread per process, temp stores."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
LIBERO_ASSETS = SHARED / "libero_assets" / "assets"


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
        torch.set_num_threads(1)  # two cores, often shared: one thread per process is fastest
        torch.manual_seed(0)
    except ImportError:
        pass
    yield


def write_toy_dataset(root, episodes=3, T=30, size=32, seed=0, nan=False):
    """A small LeRobot dataset of a square moving with the action (made here, no download)."""
    import numpy as np
    from harness.data.lerobot import Episode, write_dataset
    rng = np.random.default_rng(seed)
    eps = []
    for e in range(episodes):
        pos = rng.uniform(4, size - 12, 2)
        imgs, states, acts = [], [], []
        for t in range(T):
            a = np.array([np.sin(t / 5 + e), np.cos(t / 7 + e), 0.1 * e, 1.0 if t > T // 2 else -1.0], np.float32)
            img = np.zeros((size, size, 3), np.uint8)
            x, y = np.clip(pos, 0, size - 8).astype(int)
            img[y:y + 8, x:x + 8] = [200, 40 * e, 60]
            imgs.append(img)
            states.append(np.array([*pos / size, t / T, e], np.float32))
            acts.append(a)
            pos = pos + a[:2]
        action = np.stack(acts)
        if nan:
            action[:] = np.nan
        eps.append(Episode(task=["push the square left", "lift the square", "move it up"][e % 3],
                           state=np.stack(states), action=action, images={"front": np.stack(imgs)}))
    return write_dataset(root, eps, fps=10, video=False)


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory):
    return write_toy_dataset(tmp_path_factory.mktemp("toy") / "ds")


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray per test module (2 CPUs, no dashboard), as `harness.scale.ray_cells.connect` starts it."""
    import ray
    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_worker_niceness", "0")
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    if started:
        ray.shutdown()


def like_a_terminal():
    """Popen's preexec_fn for a child that a test Ctrl-C's: SIGINT back to its default. A test run
    started in the background by a non-interactive shell (`cmd &` with no job control, as some CI
    runners do) has SIGINT ignored, children inherit that across exec, and a Python started with
    SIGINT ignored never raises KeyboardInterrupt: the child would run on as if no one pressed Ctrl-C."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# The longest modules first (measured: test_libero ~200 s, test_libero_path ~195 s, test_grid ~150 s,
# test_train ~120 s of a ~1000 s serial run): `make test` runs two workers that take whole files
# in collection order (--dist loadfile), and a long file collected last leaves one core idle while
# it finishes alone.
LONGEST_FIRST = ("test_libero_path.py", "test_libero.py", "test_grid.py", "test_train.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order

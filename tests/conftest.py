"""Test-wide settings: offscreen MuJoCo rendering, one torch thread per process, temp stores."""
import os

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
LIBERO_ASSETS = SHARED / "libero_assets" / "assets"


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
        torch.manual_seed(0)
    except ImportError:
        pass
    yield

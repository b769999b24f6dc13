"""The environment variables the harness reads, and the GL defaults, in one place.

`FORWARDED` is what a process the harness starts needs from its parent: environment workers,
demo writers, Ray cells and sweep trials get `forwarded()` (a Ray worker is started by the
raylet, not by us, so nothing is inherited there). `gl_defaults()` chooses headless EGL
rendering unless the user chose another backend; `wam-bench` calls it when a command starts,
before any simulator is imported (MuJoCo and robosuite pick their GL context at import), and
never at import time.
"""
from __future__ import annotations

import os

FORWARDED = (
    "MUJOCO_GL",            # MuJoCo's GL backend: egl | osmesa | glfw
    "PYOPENGL_PLATFORM",    # PyOpenGL's, matching MUJOCO_GL (robosuite renders through it)
    "LIBERO_ASSETS",        # LIBERO scene assets (harness/suites/libero.py; --libero-assets sets it)
    "WAM_LATENT_CACHE",     # on-disk cache of Wan VAE latents (harness/model/codecs.py)
    "WAM_TEXT_CACHE",       # on-disk cache of text embeddings (harness/model/text_encoders.py)
    "WAM_BENCH_DEMO_ENVS",  # simulators a demos worker keeps (harness/data/demos.py)
)


def gl_defaults() -> None:
    """Headless rendering unless the user chose: MUJOCO_GL=egl, and PyOpenGL on the same backend."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


def forwarded() -> dict[str, str]:
    """The FORWARDED variables set in this process (GL defaults applied), for a child to `apply`."""
    gl_defaults()
    return {k: os.environ[k] for k in FORWARDED if k in os.environ}


def apply(env: dict[str, str]) -> None:
    """In a started process: take the parent's variables before any simulator is imported."""
    os.environ.update(env)

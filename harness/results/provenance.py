"""Where a result came from: code commit (and whether it was dirty), package versions, hardware.

Stored in every result.json so two numbers are only compared when they saw the same code
and machine, and the report can say which commits and machines a table mixes.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

CORE_PACKAGES = ("torch", "numpy", "mujoco", "wam-bench")
OPTIONAL_PACKAGES = ("hf-libero", "libero", "robosuite", "ray", "optuna", "safetensors")
_REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=_REPO,
                              check=True, timeout=10).stdout.strip()
    except (subprocess.SubprocessError, FileNotFoundError, OSError):
        return None


def git_state() -> dict:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def package_versions(extra: tuple[str, ...] = ()) -> dict:
    """Versions of the core packages (None when absent) and of optional ones that are installed."""
    out = {}
    for name in (*CORE_PACKAGES, *OPTIONAL_PACKAGES, *extra):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            if name in CORE_PACKAGES or name in extra:
                out[name] = None
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 ** 2, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def hardware() -> dict:
    hw = {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gb": _memory_gb(), "gpu": None,
          "platform": platform.platform()}
    if "torch" in sys.modules or _has("torch"):
        try:
            import torch
            hw["torch_threads"] = torch.get_num_threads()
            if torch.cuda.is_available():
                hw["gpu"] = torch.cuda.get_device_name(0)
                hw["gpu_count"] = torch.cuda.device_count()
                hw["cuda"] = torch.version.cuda
        except Exception as e:  # a broken CUDA install must not stop a result being written
            hw["gpu_error"] = f"{type(e).__name__}: {e}"
    return hw


def _has(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def provenance(extra_packages: tuple[str, ...] = ()) -> dict:
    return {
        "git": git_state(),
        "packages": package_versions(tuple(extra_packages)),
        "hardware": hardware(),
        "mujoco_gl": os.environ.get("MUJOCO_GL"),
        "python": sys.version.split()[0],
        "hostname": socket.gethostname(),
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def load_snapshot() -> dict:
    """The load a measurement ran under (1- and 5-minute load averages over the cores): latency
    taken while other cells share the cores is not like for like with latency taken alone."""
    one, five, _ = os.getloadavg()
    return {"loadavg_1m": one, "loadavg_5m": five, "cpus": os.cpu_count()}

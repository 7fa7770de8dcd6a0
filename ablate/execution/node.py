"""Where a stage ran: the host, the Ray node and the device, recorded with every attempt."""
from __future__ import annotations

import functools
import platform
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The CPU's model name (as `lscpu` shows it), or the platform's machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def code_commit() -> str:
    """The git commit of the code that runs (with "+changes" when the checkout has uncommitted
    edits under core/ or ablate/), or "unknown" outside a git checkout."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "core", "ablate"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def ray_node_id() -> str | None:
    """The id of the Ray node this process runs on; None outside Ray (never imports Ray itself)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a driver-less context: no node to name
        return None


def device_name(device: str) -> str:
    """The GPU's name where the stage's `device` setting puts it on one, else the CPU's model."""
    if device != "cpu":
        import torch  # the stage's engine runs on it anyway

        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    return cpu_model()


def describe(device: str) -> dict[str, str]:
    """{"host", "ray_node_id", "device"} of this process, for a stage set to run on `device`."""
    out = {"host": socket.gethostname(), "device": device_name(device)}
    node = ray_node_id()
    if node:
        out["ray_node_id"] = node
    return out

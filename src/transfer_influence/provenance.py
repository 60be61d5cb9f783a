"""Where results came from: package version and git SHA, library versions, device."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["device_name", "git_sha", "package_version", "provenance"]


def package_version() -> str:
    try:
        return metadata.version("transfer-influence")
    except metadata.PackageNotFoundError:
        return "unknown"


@cache
def git_sha() -> str | None:
    """The commit the package was imported from (with '-dirty' if modified), else None.

    Where the code travelled without its .git (copied to another machine),
    TRANSFER_INFLUENCE_GIT_SHA says it.
    """
    if os.environ.get("TRANSFER_INFLUENCE_GIT_SHA"):
        return os.environ["TRANSFER_INFLUENCE_GIT_SHA"]
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def device_name(device: str = "cpu") -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine()


def provenance(device: str = "cpu") -> dict[str, Any]:
    info: dict[str, Any] = {
        "package_version": package_version(),
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "device": device,
        "device_name": device_name(device),
    }
    for module in ("numpy", "torch"):
        try:
            info[module] = metadata.version(module)
        except metadata.PackageNotFoundError:
            info[module] = None
    if "torch" in sys.modules:  # only report CUDA when torch is already in use
        torch = sys.modules["torch"]
        info["cuda"] = torch.version.cuda
    return info

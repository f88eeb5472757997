"""Helpers shared by the benchmark scripts: machine name, load, device synchronisation."""

from __future__ import annotations

import os
import platform

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall time measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (falls back to ``platform``)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``CPU <model> (<n> cores)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_model()} ({os.cpu_count()} cores)"


def load_line() -> str:
    """The 1-minute load average (the machine is shared; state it beside each timing)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "?"

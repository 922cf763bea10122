"""Where training runs: CUDA when available, CPU otherwise."""

from __future__ import annotations

import torch

from soap.config import ConfigError


def resolve_device(spec: str = "auto") -> torch.device:
    """'auto' -> the first visible CUDA device, else CPU; 'cpu', 'cuda', 'cuda:N' taken as given."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available on this machine")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"

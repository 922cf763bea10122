"""Where training runs: CUDA when available, CPU otherwise."""

from __future__ import annotations

import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


@contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """torch.set_float32_matmul_precision for the block (highest: fp32 products on every device, so a
    CPU run and a GPU run compute the same products; high: TF32 where the GPU has it)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(precision)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def device_record(device: torch.device) -> dict:
    """The device's type and model, and the precision flags its products ran under, for meta.json."""
    record = {"device_type": device.type, "float32_matmul_precision": torch.get_float32_matmul_precision()}
    if device.type == "cuda":
        record.update(device_model=torch.cuda.get_device_name(device),
                      cuda_matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                      cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    else:
        record["device_model"] = cpu_model()
    return record


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform's processor string elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"

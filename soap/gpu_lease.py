"""One GPU per training job: a lease on per-device lock files.

Snakemake's `--resources gpu=N` caps how many training jobs run at once, but gives a job no slot id,
so it cannot say *which* device a job should use. Each job therefore leases a device itself: it takes
an exclusive file lock (the `filelock` library: flock on Linux) on `<lock_dir>/gpu-<device>.lock` for
the first free device and holds it for its whole life. The kernel drops the lock when its holder dies,
however it dies (SIGKILL included), so a crashed job never leaves a device locked. The job then sees only its device (CUDA_VISIBLE_DEVICES), so
code inside it just asks for "cuda".

Devices are leased among the ones already visible: an existing CUDA_VISIBLE_DEVICES (set by SLURM, or
by hand) is honoured. The lock files are named by each device's UUID, so that jobs coordinate on
physical devices however each sees them: under SLURM's device isolation every job sees its GPU as 0,
and index-named locks would queue jobs on different GPUs behind one lock. Where no UUID can be read the
visible identifier names the lock (a log line says so). With no GPU the lease is a no-op and the job
runs on the CPU unchanged.

Two ways in:
    with gpu_lease(lock_dir, gpus="auto") as lease: ...   # inside Python, before CUDA is initialised
    python -m soap.gpu_lease --gpus auto -- soap train ...  # wraps any command (exec keeps the lock)
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, MutableMapping

ENV = "CUDA_VISIBLE_DEVICES"
log = logging.getLogger(__name__)


class LeaseError(RuntimeError):
    """No device could be leased (bad setting, or none freed before the timeout)."""


# visible identifiers -> each one's UUID (None where unknown), in their order
UuidSource = Callable[[list[str], MutableMapping[str, str]], list[str | None]]


@dataclass
class Lease:
    device: str  # identifier as the parent process sees it ("0", "3", "GPU-<uuid>", ...)
    path: Path  # the lock file, named by the device's UUID where known
    lock: object  # the held filelock.FileLock; releasing it frees the device

    def release(self) -> None:
        self.lock.release()


def _holder(fd: int) -> None:
    """Write who holds a device into its lock file, for a person looking at a stuck queue."""
    os.ftruncate(fd, 0)
    os.write(fd, f"{socket.gethostname()} pid {os.getpid()}\n".encode())


def default_lock_dir() -> Path:
    # Per user and per machine: devices are per machine, and /tmp is local to each node on a cluster.
    return Path(tempfile.gettempdir()) / f"soap-gpu-locks-{os.getuid()}"


def count_gpus() -> int:
    """Number of CUDA devices on this machine, without initialising CUDA in this process.

    CUDA reads CUDA_VISIBLE_DEVICES once, when it initialises; counting through torch here could
    initialise it before the lease has chosen a device, so the count comes from nvidia-smi or a
    throwaway interpreter. A count that fails is 0 (run on the CPU), with a warning saying why.
    """
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
            if out.returncode == 0:
                return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
            log.warning("nvidia-smi -L failed (exit %d: %s); asking torch instead", out.returncode,
                        out.stderr.strip()[:200])
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("nvidia-smi -L failed (%s); asking torch instead", err)
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise ValueError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}")
        return int(out.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError) as err:
        log.warning("GPU detection failed (%s): running on the CPU", err)
        return 0


def visible_devices(gpus: str | int = "auto", env: MutableMapping[str, str] | None = None) -> list[str]:
    """Device identifiers a job may lease: the visible ones, the first `gpus` of them if a number.

    `gpus` is "auto" (all visible), 0 (none: run on CPU) or a positive count.
    """
    env = os.environ if env is None else env
    if str(gpus) == "0":
        return []
    if ENV in env:
        # An empty or "-1" CUDA_VISIBLE_DEVICES hides every device.
        devices = [d.strip() for d in env[ENV].split(",") if d.strip() and d.strip() != "-1"]
    else:
        devices = [str(i) for i in range(count_gpus())]
    if str(gpus) == "auto":
        return devices
    try:
        wanted = int(gpus)
    except ValueError:
        raise LeaseError(f"gpus must be 'auto', 0 or a positive integer, got {gpus!r}") from None
    if wanted < 0:
        raise LeaseError(f"gpus must be 'auto', 0 or a positive integer, got {gpus!r}")
    if wanted > len(devices):
        raise LeaseError(f"gpus={wanted} but only {len(devices)} device(s) visible: {devices}")
    return devices[:wanted]


def _lock_path(lock_dir: Path, device: str) -> Path:
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', device)}.lock"


def cuda_uuids(devices: list[str], env: MutableMapping[str, str]) -> list[str | None]:
    """The UUID of each visible device (torch.cuda.get_device_properties(i).uuid), asked of a throwaway
    interpreter that sees the same CUDA_VISIBLE_DEVICES: this process must not initialise CUDA before
    the lease narrows it. None for each where that fails, or where no NVIDIA driver is present (no
    device node: nothing to ask, and the interpreter would cost seconds)."""
    if not Path("/dev/nvidiactl").exists():
        return [None] * len(devices)
    code = ("import torch\nfor i in range(torch.cuda.device_count()):\n"
            "    print('GPU-' + str(torch.cuda.get_device_properties(i).uuid))")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env=dict(env))
        found = out.stdout.split() if out.returncode == 0 else []
    except (OSError, subprocess.SubprocessError):
        found = []
    return found if len(found) == len(devices) else [None] * len(devices)


def lock_keys(devices: list[str], env: MutableMapping[str, str] | None = None,
              uuids: UuidSource = cuda_uuids) -> dict[str, str]:
    """{visible identifier: the name of its lock}: its UUID, or the identifier itself where none is known."""
    env = os.environ if env is None else env
    keys = {}
    for device, uuid in zip(devices, uuids(devices, env)):
        if uuid is None:
            log.info("GPU lease: no UUID for device %s; its lock is named by the visible index (jobs that see "
                     "one GPU under different indices will not coordinate)", device)
        keys[device] = uuid or device
    return keys


def _device_lock(path: Path, **options):
    from filelock import FileLock

    # No soft fallback: a soft lock outlives a SIGKILLed holder, which is the one thing the lease relies on.
    return FileLock(path, fallback_to_soft=False, **options)


def try_acquire(devices: list[str], lock_dir: str | os.PathLike, keys: dict[str, str] | None = None) -> Lease | None:
    """Lease the first free device of `devices`, or return None if all are held. keys: each device's
    lock name (lock_keys; default: the identifier itself)."""
    from filelock import Timeout

    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        path = _lock_path(lock_dir, (keys or {}).get(device, device))
        lock = _device_lock(path, on_acquired=_holder)
        try:
            lock.acquire(blocking=False)
        except Timeout:
            continue
        return Lease(device, path, lock)
    return None


def acquire(devices: list[str], lock_dir: str | os.PathLike | None = None, *, poll_s: float = 0.5,
            timeout_s: float | None = None, keys: dict[str, str] | None = None) -> Lease:
    """Block until one of `devices` is free and lease it (LeaseError after `timeout_s`, naming each
    device and its holder). keys: each device's lock name (lock_keys)."""
    return _wait(lambda d, l: try_acquire(d, l, keys), devices, lock_dir, poll_s, timeout_s, keys)


def _wait(take, devices: list[str], lock_dir, poll_s: float, timeout_s: float | None,
          keys: dict[str, str] | None = None):
    """Poll take(devices, lock_dir) until it leases a device."""
    if not devices:
        raise LeaseError("no devices to lease")
    lock_dir = Path(lock_dir) if lock_dir is not None else default_lock_dir()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        lease = take(devices, lock_dir)
        if lease is not None:
            return lease
        if deadline is not None and time.monotonic() > deadline:
            holders = "; ".join(f"{d} held by {_held_by(_lock_path(lock_dir, (keys or {}).get(d, d)))}"
                                for d in devices)
            raise LeaseError(f"no device of {devices} freed within {timeout_s} s (locks in {lock_dir}): {holders}")
        time.sleep(poll_s)


def _held_by(path: Path) -> str:
    try:
        return path.read_text().strip() or "an unnamed holder"
    except OSError:
        return "an unreadable lock"


@contextmanager
def gpu_lease(lock_dir: str | os.PathLike | None = None, gpus: str | int = "auto", *,
              env: MutableMapping[str, str] | None = None, poll_s: float = 0.5,
              timeout_s: float | None = None, uuids: UuidSource = cuda_uuids) -> Iterator[Lease | None]:
    """Hold one device for the block, with CUDA_VISIBLE_DEVICES narrowed to it; None when no GPU.
    uuids: where the devices' UUIDs come from (lock_keys).

    Enter it before anything initialises CUDA in this process, or the narrowing has no effect.
    """
    env = os.environ if env is None else env
    devices = visible_devices(gpus, env)
    if not devices:
        yield None
        return
    lease = acquire(devices, lock_dir, poll_s=poll_s, timeout_s=timeout_s, keys=lock_keys(devices, env, uuids))
    previous = env.get(ENV)
    env[ENV] = lease.device
    try:
        yield lease
    finally:
        if previous is None:
            env.pop(ENV, None)
        else:
            env[ENV] = previous
        lease.release()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m soap.gpu_lease",
        description="Lease a free GPU, then run COMMAND on it (CUDA_VISIBLE_DEVICES set) holding the "
                    "lease until it exits. With no GPU, COMMAND runs unchanged.")
    parser.add_argument("--gpus", default="auto", help="'auto' (all visible), 0 (CPU) or a count")
    parser.add_argument("--lock-dir", default=None, help=f"lock files (default {default_lock_dir()})")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given")
    devices = visible_devices(args.gpus)
    if devices:
        keys = lock_keys(devices)
        device, path = _wait(lambda d, l: _try_acquire_for_exec(d, l, keys), devices, args.lock_dir, 0.5,
                             args.timeout, keys)
        os.environ[ENV] = device
        print(f"soap.gpu_lease: device {device} ({path})", file=sys.stderr, flush=True)
    os.execvp(command[0], command)


def _try_acquire_for_exec(devices: list[str], lock_dir: Path, keys: dict[str, str]) -> tuple[str, Path] | None:
    """Lease a device on a descriptor that survives exec, so the lock lives exactly as long as the command.

    FileLock keeps its descriptor to itself, so here filelock.lock_descriptor locks one we own (the same
    primitive, so it contends with FileLock holders), left open and inheritable across exec.
    """
    from filelock import lock_descriptor

    lock_dir.mkdir(parents=True, exist_ok=True)
    for device in devices:
        path = _lock_path(lock_dir, keys.get(device, device))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        if lock_descriptor(fd, blocking=False):
            _holder(fd)
            os.set_inheritable(fd, True)
            return device, path
        os.close(fd)
    return None



if __name__ == "__main__":
    main()

"""The GPU lease: one job per device, honouring CUDA_VISIBLE_DEVICES, released when a holder dies.

No GPU is needed: the lease only ever touches lock files and environment variables.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from soap.gpu_lease import ENV, LeaseError, gpu_lease, try_acquire, visible_devices

CTX = mp.get_context("fork")


def test_visible_devices_honours_existing_cuda_visible_devices():
    env = {ENV: "2, 3"}
    assert visible_devices("auto", env) == ["2", "3"]
    assert visible_devices(1, env) == ["2"]
    assert visible_devices("1", env) == ["2"]
    assert visible_devices(0, env) == []
    assert visible_devices("auto", {ENV: ""}) == []
    assert visible_devices("auto", {ENV: "-1"}) == []
    with pytest.raises(LeaseError, match="only 2 device"):
        visible_devices(3, env)
    with pytest.raises(LeaseError, match="gpus must be"):
        visible_devices("many", env)


def test_each_lock_file_is_leased_once(tmp_path):
    first, second = try_acquire(["0", "1"], tmp_path), try_acquire(["0", "1"], tmp_path)
    assert {first.device, second.device} == {"0", "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-0.lock", "gpu-1.lock"]
    assert try_acquire(["0", "1"], tmp_path) is None  # both held
    first.release()
    again = try_acquire(["0", "1"], tmp_path)
    assert again is not None and again.device == first.device
    again.release()
    second.release()


def test_no_gpu_means_no_lease_and_unchanged_environment(tmp_path):
    env = {ENV: ""}
    with gpu_lease(tmp_path, "auto", env=env) as lease:
        assert lease is None
    assert env == {ENV: ""}
    with gpu_lease(tmp_path, 0, env={ENV: "0"}) as lease:
        assert lease is None
    assert not any(tmp_path.iterdir())


def _job(lock_dir, hold_s, results):
    os.environ[ENV] = "4,7"  # the devices the "scheduler" made visible to every job
    with gpu_lease(lock_dir, "auto", poll_s=0.02) as lease:
        start = time.monotonic()
        seen = os.environ[ENV]
        time.sleep(hold_s)
        results.put((lease.device, seen, start, time.monotonic()))


def test_more_jobs_than_devices_never_share_a_device(tmp_path):
    results = CTX.Queue()
    jobs = [CTX.Process(target=_job, args=(tmp_path, 0.2, results)) for _ in range(6)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=30)
        assert job.exitcode == 0
    records = [results.get(timeout=5) for _ in jobs]
    assert {device for device, *_ in records} <= {"4", "7"}
    for device, seen, _, _ in records:
        assert seen == device  # each job sees only its own device
    for device in ("4", "7"):
        spans = sorted((s, e) for d, _, s, e in records if d == device)
        assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))
    # Six 0.2 s jobs on two devices: both devices were used, so jobs ran two at a time.
    assert {device for device, *_ in records} == {"4", "7"}


def _hold_forever(lock_dir, acquired):
    lease = try_acquire(["0"], lock_dir)
    assert lease is not None
    acquired.set()
    time.sleep(600)


def test_sigkilled_holder_releases_its_device(tmp_path):
    acquired = CTX.Event()
    holder = CTX.Process(target=_hold_forever, args=(tmp_path, acquired))
    holder.start()
    assert acquired.wait(timeout=30)
    assert try_acquire(["0"], tmp_path) is None
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=10)
    lease = try_acquire(["0"], tmp_path)
    assert lease is not None and lease.device == "0"
    lease.release()


def test_command_wrapper_runs_on_the_leased_device_and_holds_it(tmp_path):
    probe = (
        "import os; from soap.gpu_lease import try_acquire; "
        f"print(os.environ['{ENV}'], try_acquire(['5'], {str(tmp_path)!r}) is None)"
    )
    env = {**os.environ, ENV: "5"}
    out = subprocess.run(
        [sys.executable, "-m", "soap.gpu_lease", "--lock-dir", str(tmp_path), "--", sys.executable, "-c",
         probe], env=env, capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["5", "True"]  # the command saw device 5, and its lock was held
    assert try_acquire(["5"], tmp_path) is not None  # released when the command exited


def test_waiting_for_a_held_device_times_out_with_a_clear_error(tmp_path):
    from soap.gpu_lease import acquire

    held = try_acquire(["0"], tmp_path)
    started = time.monotonic()
    with pytest.raises(LeaseError, match=f"no device of \\['0'\\] freed within 0.3 s \\(locks in {tmp_path}\\)"):
        acquire(["0"], tmp_path, poll_s=0.05, timeout_s=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    held.release()
    lease = acquire(["0"], tmp_path, timeout_s=0.3)  # free again: leased at once
    assert lease.device == "0"
    lease.release()


def test_failed_gpu_detection_warns_and_falls_back_to_cpu(monkeypatch, caplog):
    import soap.gpu_lease as gl

    monkeypatch.setattr(gl.shutil, "which", lambda name: None)  # no nvidia-smi
    monkeypatch.setattr(gl.sys, "executable", "/nonexistent/python")  # and the torch probe cannot start
    with caplog.at_level("WARNING", logger="soap.gpu_lease"):
        assert visible_devices("auto", env={}) == []
    assert "GPU detection failed" in caplog.text and "/nonexistent/python" in caplog.text


def fake_uuids(table: dict[str, str | None]):
    """A UUID source that knows the devices in `table` by visible identifier."""
    return lambda devices, env: [table.get(d) for d in devices]


def test_leases_of_one_physical_device_serialise_whatever_index_each_job_sees_it_under(tmp_path):
    # SLURM isolation: two jobs each see their GPU as "0"; the same GPU seen as "0" and "3" by others
    same = fake_uuids({"0": "GPU-aaaa", "3": "GPU-aaaa"})
    with gpu_lease(tmp_path, "auto", env={ENV: "0"}, uuids=same) as first:
        assert first.path.name == "gpu-GPU-aaaa.lock"
        with pytest.raises(LeaseError, match=r"no device of \['3'\] freed within 0.2 s .*: 3 held by \S+ pid \d+"):
            with gpu_lease(tmp_path, "auto", env={ENV: "3"}, uuids=same, poll_s=0.05, timeout_s=0.2):
                pass
        other = fake_uuids({"0": "GPU-bbbb"})
        env = {ENV: "0"}
        with gpu_lease(tmp_path, "auto", env=env, uuids=other) as second:  # another GPU, also seen as 0
            assert second.path.name == "gpu-GPU-bbbb.lock" and env[ENV] == "0"


def test_without_a_uuid_the_lock_is_named_by_the_visible_index_and_a_log_line_says_so(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="soap.gpu_lease"):
        with gpu_lease(tmp_path, "auto", env={ENV: "2"}, uuids=fake_uuids({})) as lease:
            assert lease.path.name == "gpu-2.lock"
    assert "no UUID for device 2" in caplog.text

"""Device specs (soap.devices): what each resolves to, and a one-line error for a bad one."""

import pytest
import torch

from soap.config import ConfigError
from soap.devices import describe, resolve_device


def test_cpu_and_auto_resolve_to_a_device_this_machine_has():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert "threads" in describe(torch.device("cpu"))


@pytest.mark.parametrize("spec, message", [("tpu", "unknown device 'tpu'"), ("gpu:0", "unknown device 'gpu:0'")])
def test_an_unknown_device_is_a_one_line_error(spec, message):
    with pytest.raises(ConfigError, match=message):
        resolve_device(spec)


def test_a_cuda_device_this_machine_lacks_is_a_one_line_error():
    count = torch.cuda.device_count()
    # without CUDA, any cuda spec; with it, one past the last visible device
    spec, message = (f"cuda:{count}", f"only {count} CUDA device") if count else ("cuda", "CUDA is not available")
    with pytest.raises(ConfigError, match=f"device '{spec}' requested but {message}"):
        resolve_device(spec)

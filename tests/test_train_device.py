"""The trainer's device setting: `cuda` without an index names this process's GPU (torch.cuda.set_device
rejects an index-less device: `swiftsam train --device cuda` crashed), and a bad name is a clear error."""

from types import SimpleNamespace

import pytest
import torch

from swiftsam.errors import InputError
from swiftsam.train import distributed as ddp
from swiftsam.train.trainer import _device


@pytest.mark.parametrize("name, local_rank, expected", [("cuda", 0, "cuda:0"), ("cuda", 1, "cuda:1"),
                                                         ("cuda:2", 1, "cuda:2"), ("auto", 1, "cuda:1")])
def test_cuda_gets_an_index(monkeypatch, name, local_rank, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # cuda:N is checked against the GPUs there are
    monkeypatch.delenv("SWIFTSAM_DEVICE", raising=False)  # conftest keeps "auto" on the CPU for the other tests
    dev = _device(SimpleNamespace(device=name), ddp.Dist(rank=local_rank, world=2, local_rank=local_rank))
    assert dev == torch.device(expected) and dev.index is not None


def test_cpu_and_bad_names():
    assert _device(SimpleNamespace(device="cpu"), ddp.Dist()) == torch.device("cpu")
    with pytest.raises(InputError, match="not a device"):
        _device(SimpleNamespace(device="gpu0"), ddp.Dist())


def test_cuda_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="no CUDA device"):
        _device(SimpleNamespace(device="cuda"), ddp.Dist())

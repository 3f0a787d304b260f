"""device="auto" everywhere (issue 19): one resolver, CUDA when present else the CPU, a clear error when CUDA is
asked for and absent, and --device on the commands that run a model. No GPU needed: CUDA's presence is faked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam.cli import build_parser, main
from swiftsam.errors import InputError
from swiftsam.runtime import DEVICE_ENV, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    """What the resolver sees on a machine with two GPUs (nothing is moved there in these tests)."""
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device(" AUTO ") == torch.device("cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_auto_is_cuda_when_present_and_indices_are_checked(two_gpus):
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device(torch.device("cuda", 0)) == torch.device("cuda", 0)
    with pytest.raises(InputError, match=r"device cuda:2: this machine has 2 CUDA devices \(cuda:0 to cuda:1\)"):
        resolve_device("cuda:2")


def test_cuda_without_cuda_is_a_clear_error(no_cuda):
    for spec in ("cuda", "cuda:0", torch.device("cuda", 1)):
        with pytest.raises(InputError, match="sees no CUDA device; use device cpu"):
            resolve_device(spec)


@pytest.mark.parametrize("spec", ["gpu0", "", "cuda:x", 3])
def test_names_that_are_not_devices(no_cuda, spec):
    with pytest.raises(InputError, match="is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device(spec)


def test_environment_says_what_auto_means(two_gpus, monkeypatch):
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)  # a named device is not overridden
    monkeypatch.setenv(DEVICE_ENV, "tpu9")
    with pytest.raises(InputError, match=f"{DEVICE_ENV}=tpu9: device 'tpu9' is not a device"):
        resolve_device("auto")


def test_load_build_and_predictor_take_auto_and_refuse_missing_cuda(no_cuda):
    model = swiftsam.load()  # default device "auto": the CPU here
    assert model.device == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA device"):
        swiftsam.load(device="cuda")
    with pytest.raises(InputError, match="no CUDA device"):
        swiftsam.build("nanosam-r18", input_size=64, device="cuda:0")
    assert swiftsam.build("nanosam-r18", input_size=64, device="auto").device == torch.device("cpu")
    with pytest.raises(InputError, match="no CUDA device"):
        swiftsam.Predictor(device="cuda")
    with pytest.raises(InputError, match="no CUDA device"):
        swiftsam.Predictor(model, device="cuda", engine="torch")
    assert swiftsam.Predictor(model, engine="torch").device == torch.device("cpu")


def test_auto_keeps_a_given_model_where_it_is(two_gpus):
    """With CUDA "present" (faked), a model object given with the default device is not moved."""
    model = swiftsam.build("nanosam-r18", input_size=64)
    assert swiftsam.Predictor(model, engine="torch").model.device == torch.device("cpu")


@pytest.mark.parametrize("command", [["segment", "IMG", "--box", "1,1,20,20", "--out", "m.png"],
                                     ["everything", "IMG", "--out", "out"],
                                     ["eval", "coco", "--images", "i", "--annotations", "a.json"],
                                     ["bench"], ["export", "swiftsam-r18", "--out", "x"]])
def test_every_model_command_takes_device(command):
    assert build_parser().parse_args(command).device in ("auto", "cpu")  # export: cpu (graphs do not depend on it)
    assert build_parser().parse_args([*command, "--device", "cuda:1"]).device == "cuda:1"


def test_cli_device_cpu_runs_and_cuda_without_cuda_exits_2(no_cuda, tmp_path, capsys):
    image = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "m.png"
    args = ["segment", str(image), "--box", "4,4,40,30", "--out", str(out), "--engine", "torch"]
    assert main([*args, "--device", "cpu"]) == 0 and out.exists()
    out.unlink()
    assert main([*args, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "swiftsam: error: device cuda: this torch" in err and "use device cpu" in err and not out.exists()
    for command in (["everything", str(image), "--out", str(tmp_path / "e")],
                    ["export", "swiftsam-r18", "--out", str(tmp_path / "x")],
                    ["bench", "--no-progress", "--models", "nanosam-r18", "--stages", "encoder"]):
        assert main([*command, "--device", "cuda"]) == 2, command
        assert "no CUDA device" in capsys.readouterr().err

"""The command line, end to end, on a generated checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam.cli import main
from tests.conftest import ROOT, randomize_

ASSET = ROOT / "assets" / "snowboard.jpg"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "mobile_sam.pt"
    torch.save(randomize_(swiftsam.build("mobilesam"), seed=11).state_dict(), path)
    return path


def test_segment_writes_mask_overlay_and_json(checkpoint, tmp_path, capsys):
    out, ov = tmp_path / "masks.png", tmp_path / "overlay.png"
    rc = main(["segment", str(ASSET), "--model", "mobilesam", "--checkpoint", str(checkpoint), "--box", "275,15,410,409",
               "--box", "331,383,408,423", "--out", str(out), "--overlay", str(ov), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert [o["id"] for o in report["objects"]] == [1, 2]
    labels = np.asarray(Image.open(out))
    overlay = np.asarray(Image.open(ov))
    assert labels.shape == (428, 640) and overlay.shape == (428, 640, 3)
    assert set(np.unique(labels)) <= {0, 1, 2}
    for obj in report["objects"]:  # reported areas are the label image's (object 2 drawn over object 1)
        assert obj["area"] >= (labels == obj["id"]).sum()
    assert not np.array_equal(overlay, np.asarray(Image.open(ASSET)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks.png", "overlay.png"]  # no temp files left


def test_segment_with_points_single_object(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.png"
    assert main(["segment", str(ASSET), "--model", "mobilesam", "--checkpoint", str(checkpoint), "--point", "340,200", "--point", "100,100,0",
                 "--multimask", "--out", str(out)]) == 0
    assert "object 1: score" in capsys.readouterr().out
    assert set(np.unique(np.asarray(Image.open(out)))) <= {0, 255}


@pytest.mark.parametrize(
    "args,message",
    [
        (["segment", "missing.jpg", "--box", "0,0,5,5", "--out", "x.png"], "image file not found"),
        (["segment", str(ASSET), "--out", "x.png"], "give at least one --point"),
        (["segment", str(ASSET), "--box", "0,0,5000,5", "--out", "x.png"], "box outside the 640x428 image"),
        (["segment", str(ASSET), "--box", "0,0,5,5", "--box", "1,1,6,6", "--point", "3,3", "--out", "x.png"],
         "--point can only go with a single box"),
        (["segment", str(ASSET), "--model", "nosuchsam", "--box", "0,0,5,5", "--out", "x.png"], "unknown model 'nosuchsam'"),
    ],
)
def test_segment_errors_are_clear(checkpoint, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args[:2] + ["--model", "mobilesam", "--checkpoint", str(checkpoint)] + args[2:]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_malformed_prompt_arguments_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit):
        main(["segment", str(ASSET), "--box", "1,2,3", "--out", "x.png"])
    assert "--box (x0,y0,x1,y1) must be 4 comma-separated numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["segment", str(ASSET), "--point", "1,2,7", "--out", "x.png"])
    assert "point label must be 1" in capsys.readouterr().err


def test_models_and_download_commands(swiftsam_home):
    done = subprocess.run([sys.executable, "-m", "swiftsam", "models"], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].split()[:5] == ["name", "family", "input", "MB", "cached"]
    assert any(line.startswith("mobilesam ") and " no " in line for line in lines)
    assert any(line.startswith("swiftsam-r18 (default)") and " bundled " in line for line in lines)
    assert any(line.startswith("efficientvit-sam-l0") and " 512 " in line for line in lines)
    failed = subprocess.run([sys.executable, "-m", "swiftsam", "download", "nanosam-r18"], capture_output=True, text=True)
    assert failed.returncode == 2 and "no official PyTorch checkpoint" in failed.stderr
    bundled = subprocess.run([sys.executable, "-m", "swiftsam", "download", "swiftsam"], capture_output=True, text=True)
    assert bundled.returncode == 2 and "nothing to download" in bundled.stderr


def test_export_then_segment_with_each_engine(checkpoint, tmp_path, capsys):
    folder = tmp_path / "onnx"
    assert main(["export", "mobilesam", "--checkpoint", str(checkpoint), "--out", str(folder)]) == 0
    printed = capsys.readouterr().out
    assert {"encoder.onnx", "decoder.onnx", "sam_decoder.onnx", "manifest.json"} <= {p.name for p in folder.iterdir()}
    assert "orig_im_size" in printed
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["model"] == "mobilesam" and manifest["opset"] >= 17
    labels = {}
    for engine in (["--engine", "torch"], ["--engine", "onnxruntime", "--onnx-dir", str(folder), "--threads", "1"]):
        out = tmp_path / f"{engine[1]}.png"
        assert main(["segment", str(ASSET), "--model", "mobilesam", "--checkpoint", str(checkpoint), "--box", "275,15,410,409",
                     "--out", str(out), *engine]) == 0
        labels[engine[1]] = np.asarray(Image.open(out)) > 0
    a, b = labels["torch"], labels["onnxruntime"]
    assert np.logical_and(a, b).sum() / max(1, np.logical_or(a, b).sum()) >= 0.99


@pytest.mark.parametrize(
    "args,message",
    [
        (["export", "mobilesam", "--format", "tensorrt", "--out", "o"], "needs NVIDIA TensorRT"),
        (["export", "mobilesam", "--precision", "fp16", "--out", "o"], "ONNX graphs are exported in fp32"),
        (["export", "mobilesam", "--parts", "encoder,head", "--out", "o"], "unknown export part(s) ['head']"),
        (["export", "mobilesam", "--opset", "13", "--out", "o"], "opset must be >= 17"),
        (["segment", str(ASSET), "--box", "1,1,9,9", "--engine", "onnxruntime", "--dtype", "bf16", "--out", "x.png"],
         "--dtype bf16 is a torch engine option"),
        (["segment", str(ASSET), "--box", "1,1,9,9", "--engine", "tensorrt", "--out", "x.png"], "needs NVIDIA TensorRT"),
        (["segment", str(ASSET), "--box", "1,1,9,9", "--engine", "onnxruntime", "--onnx-dir", "nowhere", "--out", "x.png"],
         "missing or unreadable"),
    ],
)
def test_export_and_engine_errors_are_clear(checkpoint, args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = [] if args[0] == "export" else ["--model", "mobilesam"]  # export names its model itself
    assert main(args[:2] + [*model, "--checkpoint", str(checkpoint)] + args[2:]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "o" / "encoder.onnx").exists()

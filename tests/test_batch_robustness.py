"""Segment-everything with default settings, and batch runs that survive bad items, kills and company:
per-model defaults, the no-mask warning, progress, failed images and out-of-bounds boxes reported (not
fatal), invalid results redone, stale temporaries removed, per-image locks, stale export scratch folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam import MaskGenerator
from swiftsam.cli import main
from swiftsam.everything import SAM_DEFAULTS, NoMasksWarning, model_defaults
from swiftsam.everything.runner import SUMMARY_NAME, fit_boxes, result_problem
from swiftsam.utils import FileLock, host_tag, pid_alive, remove_stale_parts
from swiftsam.zoo import get_entry
from swiftsam.zoo.registry import EVERYTHING_KEYS, ModelEntry
from tests.conftest import ROOT, randomize_, test_image

OPEN = ["--pred-iou-thresh", "0", "--stability-score-thresh", "0"]  # random weights: keep every candidate


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "sam.pt"
    torch.save(randomize_(swiftsam.build("nanosam-r18", input_size=256), seed=3).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def default_model():
    return swiftsam.load()  # the bundled swiftsam-r18


def _folder(tmp_path, n=3, size=(64, 80)):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(n):
        Image.fromarray(test_image(*size, seed=i)).save(folder / f"{i:012d}.png")
    return folder


def _run(checkpoint, source, out, *extra):
    return main(["everything", str(source), "--model", "nanosam-r18", "--checkpoint", str(checkpoint),
                 "--out", str(out), "--points-per-side", "1", "--engine", "torch", "--no-progress", *OPEN, *extra])


def _summary(out):
    return json.loads((out / SUMMARY_NAME).read_text())


# ------------------------------------------------------------------ defaults per model
def test_models_carry_everything_defaults_and_the_generator_uses_them(default_model):
    entry = get_entry("swiftsam-r18")
    assert entry.everything and set(entry.everything) <= EVERYTHING_KEYS == set(SAM_DEFAULTS)
    assert default_model.everything_defaults == entry.everything
    gen = MaskGenerator(default_model, engine="torch")
    for key, value in entry.everything.items():
        assert getattr(gen, key) == value
    # a value the caller sets wins; a model without calibrated defaults gets SAM's
    assert MaskGenerator(default_model, pred_iou_thresh=0.5, engine="torch").pred_iou_thresh == 0.5
    assert model_defaults(swiftsam.build("nanosam-r18", input_size=256)) == SAM_DEFAULTS
    with pytest.raises(ValueError, match="unknown everything default"):
        ModelEntry(name="x", family="x", builder=lambda: None, spec=entry.spec, description="",
                   everything={"pred_iou": 0.5})


def test_default_model_finds_masks_with_its_defaults(default_model):
    image = np.asarray(Image.open(ROOT / "assets" / "snowboard.jpg").convert("RGB").resize((160, 107)))
    sam = {k: v for k, v in SAM_DEFAULTS.items() if k != "points_per_side"}
    with pytest.warns(NoMasksWarning, match="pred_iou_thresh=0.88"):  # SAM's thresholds keep nothing of this model
        assert MaskGenerator(default_model, points_per_side=2, engine="torch", **sam).generate(image) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoMasksWarning)
        assert len(MaskGenerator(default_model, points_per_side=2, engine="torch").generate(image)) > 0


def test_cli_default_model_uses_its_defaults_and_warns_when_nothing_is_kept(tmp_path, capsys):
    image = tmp_path / "snow.jpg"
    Image.open(ROOT / "assets" / "snowboard.jpg").convert("RGB").resize((160, 107)).save(image)
    out = tmp_path / "out"
    assert main(["everything", str(image), "--out", str(out), "--points-per-side", "2", "--engine", "torch"]) == 0
    captured = capsys.readouterr()
    assert int(captured.out.split("snow.jpg: ")[1].split(" masks")[0]) > 0 and "warning" not in captured.err
    settings = json.loads((out / "everything.config.json").read_text())
    assert {k: settings[k] for k in get_entry("swiftsam-r18").everything if k != "points_per_side"} == {
        k: v for k, v in get_entry("swiftsam-r18").everything.items() if k != "points_per_side"}
    assert main(["everything", str(image), "--out", str(tmp_path / "o2"), "--points-per-side", "2", "--engine",
                 "torch", "--pred-iou-thresh", "0.99"]) == 0
    captured = capsys.readouterr()
    assert "snow.jpg: 0 masks" in captured.out
    assert "swiftsam: warning: 1 image(s) with no mask kept" in captured.err
    assert "pred_iou_thresh=0.99" in captured.err and "lower pred_iou_thresh (--pred-iou-thresh)" in captured.err


def test_no_mask_warning_names_the_threshold_to_lower():
    model = randomize_(swiftsam.build("nanosam-r18", input_size=256), seed=1)
    image = test_image(64, 64)
    gen = MaskGenerator(model, points_per_side=1, pred_iou_thresh=50.0, engine="torch")
    with pytest.warns(NoMasksWarning, match=r"pred_iou_thresh=50 \(the highest was -?[0-9.]+\); lower pred_iou_thresh"):
        gen.generate(image)
    gen = MaskGenerator(model, points_per_side=1, pred_iou_thresh=-1e9, stability_score_thresh=1.5, engine="torch")
    with pytest.warns(NoMasksWarning, match="stability_score_thresh=1.5 .*lower stability_score_thresh"):
        gen.generate(image)


def test_progress_bar_over_prompts(capsys):
    model = randomize_(swiftsam.build("nanosam-r18", input_size=256), seed=1)
    MaskGenerator(model, points_per_side=2, points_per_batch=2, pred_iou_thresh=0, stability_score_thresh=0,
                  engine="torch", progress=True).generate(test_image(64, 64))
    err = capsys.readouterr().err
    assert "everything" in err and "/4 " in err
    MaskGenerator(model, points_per_side=1, pred_iou_thresh=0, stability_score_thresh=0, engine="torch").generate(
        test_image(64, 64))  # the library default: quiet
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ bad items
def test_unreadable_image_is_skipped_and_reported(checkpoint, tmp_path, capsys):
    folder = _folder(tmp_path)
    (folder / "000000000001.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    assert _run(checkpoint, folder, out) == 0
    err = capsys.readouterr().err
    assert "1 image(s) failed" in err and "000000000001.png" in err
    summary = _summary(out)
    assert summary["done"] == 2 and [f["image"] for f in summary["failed"]] == ["000000000001.png"]
    assert "not an image file" in summary["failed"][0]["error"]
    assert (out / "000000000002.json").exists() and not (out / "000000000001.json").exists()
    # --strict stops at it, naming it
    assert _run(checkpoint, folder, tmp_path / "strict", "--strict") == 2
    err = capsys.readouterr().err
    assert "swiftsam: error:" in err and "000000000001.png" in err and "--strict" in err
    assert not (tmp_path / "strict" / "000000000002.json").exists()


def test_every_image_failing_exits_2(checkpoint, tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in ("a.png", "b.jpg"):
        (folder / name).write_bytes(b"")
    assert _run(checkpoint, folder, tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no image could be segmented (2 failed" in err and "a.png" in err and "b.jpg" in err


def test_fit_boxes_clips_within_a_pixel_and_drops_the_rest():
    boxes = [[-0.4, 0, 50, 40], [10, 10, 64.9, 48.5], [0, 0, 66, 48], [5, 5, 1, 9], [np.nan, 0, 1, 1], [1, 2, 3, 4]]
    kept, clipped, dropped = fit_boxes(np.array(boxes), (48, 64))
    assert kept.tolist() == [[0, 0, 50, 40], [10, 10, 64, 48], [1, 2, 3, 4]] and clipped == 2
    assert [d["reason"].split(" ")[0] for d in dropped] == ["2.00", "x1", "not"]
    assert "outside the 64x48 image" in dropped[0]["reason"]


def test_boxes_outside_the_image_are_clipped_or_dropped_not_fatal(checkpoint, tmp_path, capsys):
    folder = _folder(tmp_path, n=2)  # 64 x 80 images, ids 0 and 1
    dets = [{"image_id": 0, "bbox": [10, 10, 70.4, 30], "score": 1},  # 0.4 px past the right edge
            {"image_id": 1, "bbox": [0, 0, 20, 20], "score": 1},
            {"image_id": 1, "bbox": [70, 50, 30, 30], "score": 1}]  # 20 px past: dropped
    (tmp_path / "dets.json").write_text(json.dumps(dets))
    out = tmp_path / "out"
    assert _run(checkpoint, folder, out, "--strategy", "boxes", "--boxes", str(tmp_path / "dets.json")) == 0
    err = capsys.readouterr().err
    assert "1 detector box(es) clipped" in err and "1 dropped" in err and "000000000001.png" in err
    first = json.loads((out / "000000000000.json").read_text())
    assert [a["prompt_box"] for a in first["annotations"]] == [[10, 10, 80, 40]] and first["boxes_clipped"] == 1
    second = json.loads((out / "000000000001.json").read_text())
    assert len(second["annotations"]) == 1 and second["boxes_dropped"][0]["box"] == [70, 50, 100, 80]
    assert _summary(out)["boxes_dropped"][0]["image"] == "000000000001.png"
    assert _run(checkpoint, folder, tmp_path / "strict", "--strategy", "boxes", "--boxes", str(tmp_path / "dets.json"),
                "--strict") == 2
    err = capsys.readouterr().err
    assert "000000000001.png" in err and "20.00 px outside the 80x64 image" in err


# ------------------------------------------------------------------ resume
def test_invalid_results_are_redone_and_stale_temporaries_removed(checkpoint, tmp_path, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    assert _run(checkpoint, folder, out) == 0
    good = (out / "000000000002.json").stat().st_mtime_ns
    (out / "000000000000.json").write_bytes(b"")  # 0-byte, by hand
    other = json.loads((out / "000000000002.json").read_text())
    (out / "000000000001.json").write_text(json.dumps(other))  # another image's result
    stale = [out / ".000000000000.json.k2j4h5g6.part", out / ".000000000002.png.abcdefgh.part",
             out / ".everything.config.json.a_b_c_d1.part"]
    for p in stale:
        p.write_bytes(b"half")
    old = time.time() - 3600
    for p in stale[1:]:  # image 2 is done: only its age tells that its temporary is stale
        os.utime(p, (old, old))
    foreign = [out / ".notes.txt", out / "x.part", out / ".my.json.toolongname.part"]
    for p in foreign:
        p.write_bytes(b"mine")
    assert _run(checkpoint, folder, out) == 0
    captured = capsys.readouterr()
    assert "2 image(s) segmented, 1 already done" in captured.out
    assert "2 invalid result(s) done again" in captured.err and "made for image '000000000002.png'" in captured.err
    for i in range(3):
        assert result_problem(out / f"{i:012d}.json", out / f"{i:012d}.png", f"{i:012d}.png") is None
    assert (out / "000000000002.json").stat().st_mtime_ns == good
    assert not any(p.exists() for p in stale) and all(p.exists() for p in foreign)
    assert not list(out.glob(".*.lock"))


def test_result_problem_checks_format_name_and_overlay(tmp_path):
    result, overlay = tmp_path / "a.json", tmp_path / "a.png"
    assert result_problem(result, overlay, "a.jpg") == "missing"
    result.write_text("{")
    assert "unreadable" in result_problem(result, overlay, "a.jpg")
    result.write_text(json.dumps({"format": "other"}))
    assert "not a swiftsam-everything/1 result" in result_problem(result, overlay, "a.jpg")
    result.write_text(json.dumps({"format": "swiftsam-everything/1", "image": "a.jpg", "annotations": []}))
    assert result_problem(result, overlay, "a.jpg") == "its overlay PNG is missing"
    overlay.write_bytes(b"png")
    assert result_problem(result, overlay, "a.jpg") is None


def test_remove_stale_parts_only_touches_ours(tmp_path):
    ours = tmp_path / ".a.json.abcd1234.part"
    fresh = tmp_path / ".b.json.abcd1234.part"
    ours.write_text("x")
    fresh.write_text("x")
    os.utime(ours, (time.time() - 100, time.time() - 100))
    (tmp_path / "c.part").write_text("x")
    assert remove_stale_parts(tmp_path, older_than_s=50) == [ours]
    assert remove_stale_parts(tmp_path, targets=["a.json"]) == []
    assert remove_stale_parts(tmp_path, targets=["b.json"]) == [fresh]
    assert (tmp_path / "c.part").exists()


# ------------------------------------------------------------------ locks
def test_file_lock_is_exclusive_and_taken_over_after_its_holder_dies(tmp_path):
    path = tmp_path / ".x.lock"
    a, b = FileLock(path), FileLock(path)
    assert a.acquire() and not b.acquire()
    assert f"pid {os.getpid()}" in b.holder()
    a.release()
    assert not path.exists() and b.acquire()
    b.release()
    # a lock file left by a killed run (its process gone, so nothing holds the lock) is taken over
    code = (f"import os\nfrom swiftsam.utils import FileLock\nlock = FileLock({str(path)!r})\n"
            "assert lock.acquire()\nos._exit(0)  # no release, as if killed")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
    assert path.exists() and FileLock(path).acquire()


def test_two_runs_share_the_work_through_per_image_locks(checkpoint, tmp_path, capsys):
    folder = _folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    held = FileLock(out / ".000000000001.lock")  # another run is working on image 1
    assert held.acquire()
    assert _run(checkpoint, folder, out) == 0
    captured = capsys.readouterr()
    assert "2 image(s) segmented, 0 already done" in captured.out
    assert "1 image(s) left to another run" in captured.err and f"pid {os.getpid()}" in captured.err
    assert not (out / "000000000001.json").exists()
    assert _summary(out)["busy"][0]["image"] == "000000000001.png"
    held.release()
    assert _run(checkpoint, folder, out) == 0
    assert "1 image(s) segmented, 2 already done" in capsys.readouterr().out


def test_two_processes_into_one_folder_do_each_image_once(checkpoint, tmp_path):
    folder = _folder(tmp_path, n=4)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "swiftsam.cli", "everything", str(folder), "--model", "nanosam-r18", "--checkpoint",
           str(checkpoint), "--out", str(out), "--points-per-side", "1", "--engine", "torch", "--no-progress", *OPEN]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    done = [int(o.split(" image(s) segmented")[0].split()[-1]) for o, _ in outputs]
    assert sum(done) == 4  # every image segmented once, by one of the two
    assert all(result_problem(out / f"{i:012d}.json", out / f"{i:012d}.png", f"{i:012d}.png") is None for i in range(4))


# ------------------------------------------------------------------ export scratch folders
def test_stale_export_scratch_folders_are_removed(tmp_path):
    from swiftsam.export.onnx import remove_stale_temporaries

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert not pid_alive(dead.pid)
    killed = tmp_path / f".export-{host_tag()}-{dead.pid}-x1y2z3"
    live = tmp_path / f".export-{host_tag()}-{os.getpid()}-x1y2z3"
    legacy_old, legacy_new = tmp_path / ".export-abcd1234", tmp_path / ".export-efgh5678"
    for d in (killed, live, legacy_old, legacy_new):
        d.mkdir()
    (killed / "encoder.onnx").write_bytes(b"half a graph")
    old = time.time() - 3600
    os.utime(legacy_old, (old, old))
    part = tmp_path / ".manifest.json.abcdefgh.part"
    part.write_text("{")
    os.utime(part, (old, old))
    (tmp_path / "encoder.onnx").write_bytes(b"a finished graph")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([killed, legacy_old, part])
    assert live.exists() and legacy_new.exists() and (tmp_path / "encoder.onnx").exists()


# ------------------------------------------------------------------ eval coco shares the lock helper
COCO = ROOT.parent / "shared" / "data" / "coco-mini"


@pytest.mark.skipif(not (COCO / "annotations" / "instances_val2017.json").exists(), reason="coco-mini not present")
def test_eval_coco_refuses_a_second_run_into_the_same_out(tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    args = ["eval", "coco", "--images", str(COCO / "val2017"), "--annotations",
            str(COCO / "annotations" / "instances_val2017.json"), "--baseline", "box-fill", "--limit", "1",
            "--out", str(out)]
    held = FileLock(out / ".results.rank0.lock")
    assert held.acquire()
    stale = out / ".summary.json.abcd1234.part"
    stale.write_text("{")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    assert main(args) == 2
    assert "is being evaluated by another run" in capsys.readouterr().err
    held.release()
    assert main(args) == 0
    assert not stale.exists() and (out / "summary.json").exists() and not (out / ".results.rank0.lock").exists()

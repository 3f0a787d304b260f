"""Training: each recipe learns on coco-mini, exact resume, 2-process torchrun, bad inputs.

Tiny configurations (NanoSAM students at 128 px, a random-weight ResNet34 teacher) keep it on CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import swiftsam
from swiftsam.errors import InputError
from swiftsam.train import Interrupted, TrainConfig, load_config, train
from tests.conftest import ROOT, SHARED, randomize_

COCO = SHARED / "coco-mini"
needs_coco = pytest.mark.skipif(not (COCO / "train2017").is_dir(), reason="needs ../shared/data/coco-mini")
SIZE = 128


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    """A random-weight teacher with structured weights (so its masks depend on its embedding)."""
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(randomize_(swiftsam.build("nanosam-r34", input_size=SIZE), seed=3).state_dict(), path)
    return str(path)


def config(tmp_path, teacher_file, **kw) -> TrainConfig:
    base = dict(
        recipe="distill-encoder",
        student={"name": "nanosam-r18", "kwargs": {"input_size": SIZE}},
        teacher={"name": "nanosam-r34", "checkpoint": teacher_file, "kwargs": {"input_size": SIZE}},
        images=str(COCO / "train2017"), out=str(tmp_path / "run"), steps=4, batch_size=4, log_every=1,
        checkpoint_every=2, eval_images=6, tensorboard=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def val(**kw) -> dict:
    return dict(val_images=str(COCO / "val2017"), val_annotations=str(COCO / "annotations/instances_val2017.json"), **kw)


def coco(**kw) -> dict:
    return dict(annotations=str(COCO / "annotations/instances_train2017.json"), **kw)


def losses(out) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln)["kind"] == "train"]


def first_last(values: list[float], k: int = 5) -> tuple[float, float]:
    return sum(values[:k]) / k, sum(values[-k:]) / k


@needs_coco
def test_distill_encoder_learns_the_teacher(tmp_path, teacher_file):
    cfg = config(tmp_path, teacher_file, steps=20, lr=1e-3, eval_images=4, **val())
    info = train(cfg, progress=False)
    start, end = first_last(losses(tmp_path / "run"))
    assert end < 0.5 * start
    before, after = info["eval_at_start"]["miou_teacher_agreement"], info["eval_at_end"]["miou_teacher_agreement"]
    assert after > before + 0.05, (before, after)
    # the result is a zoo-loadable checkpoint with its card
    model = swiftsam.load("nanosam-r18", checkpoint=tmp_path / "run" / "model.pt", input_size=SIZE)
    assert model.spec.input_size == SIZE
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["teacher"]["name"] == "nanosam-r34" and card["training"]["steps"] == 20
    assert card["eval_at_end"]["miou_teacher_agreement"] == after
    assert "swiftsam.load('nanosam-r18'" in (tmp_path / "run" / "MODEL_CARD.md").read_text()
    # the student kept the teacher's (frozen) prompt encoder and mask decoder
    teacher = torch.load(teacher_file, weights_only=True)
    assert torch.equal(model.mask_decoder.iou_token.weight, teacher["mask_decoder.iou_token.weight"])


@needs_coco
@pytest.mark.parametrize("recipe", ["distill-full", "train-masks"])
def test_prompted_recipes_reduce_their_loss(tmp_path, teacher_file, recipe):
    extra = {"teacher": None, "student": {"name": "nanosam-r18", "checkpoint": teacher_file.replace("teacher.pt", "student.pt"),
                                          "kwargs": {"input_size": SIZE}}, "box_mask_prior": True} if recipe == "train-masks" else {}
    if recipe == "train-masks":
        torch.save(randomize_(swiftsam.build("nanosam-r18", input_size=SIZE), seed=5).state_dict(),
                   extra["student"]["checkpoint"])
    if recipe == "distill-full":
        extra.update(val(), steps=20, lr=3e-4, eval_images=4)
    cfg = config(tmp_path, teacher_file, recipe=recipe, **{"steps": 12, "lr": 1e-4, **extra}, batch_size=2,
                 objects_per_image=2, prompt_rounds=2, **coco())
    info = train(cfg, progress=False)
    values = losses(tmp_path / "run")
    start, end = first_last(values, 4)
    assert end < start, values
    if recipe == "distill-full":  # the whole student moves towards its teacher on held-out images
        before = info["eval_at_start"]["miou_teacher_agreement"]
        after = info["eval_at_end"]["miou_teacher_agreement"]
        assert after > before + 0.03, (before, after)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    keys = {"embedding", "tokens", "masks"} if recipe == "distill-full" else {"train_iou"}
    assert keys <= set([ln for ln in lines if ln["kind"] == "train"][-1])
    if recipe == "train-masks":  # the model card says how to run a model trained with the box prior
        assert json.loads((tmp_path / "run" / "model_card.json").read_text())["training"]["box_mask_prior"]


@needs_coco
def test_resume_after_interruption_is_exact(tmp_path, teacher_file):
    whole = config(tmp_path / "a", teacher_file, steps=5, batch_size=2, checkpoint_every=2,
                   teacher_cache=str(tmp_path / "cache"))
    train(whole, progress=False)
    cut = config(tmp_path / "b", teacher_file, steps=5, batch_size=2, checkpoint_every=2,
                 teacher_cache=str(tmp_path / "cache"))
    with pytest.raises(Interrupted):
        train(cut, progress=False, stop_after=3)  # killed after step 3: the last checkpoint is step 2
    assert torch.load(tmp_path / "b/run/checkpoints/last.pt", weights_only=True)["step"] == 2
    train(cut, progress=False)
    a = swiftsam.zoo.read_state_dict(tmp_path / "a/run/model.pt")
    b = swiftsam.zoo.read_state_dict(tmp_path / "b/run/model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the same weights give the same file: the sha256 in the model card is reproducible
    card_a, card_b = (json.loads((tmp_path / f"{x}/run/model_card.json").read_text()) for x in "ab")
    assert card_a["sha256"] == card_b["sha256"]
    meta = swiftsam.zoo.read_checkpoint(tmp_path / "a/run/model.pt")[1]
    assert {k: meta[k] for k in ("format", "model", "input_size", "box_mask_prior")} == {
        "format": "swiftsam-checkpoint/1", "model": "nanosam-r18", "input_size": SIZE, "box_mask_prior": False}
    assert swiftsam.ModelContract.from_dict(meta["contract"]) == swiftsam.build("nanosam-r18", input_size=SIZE).contract
    assert losses(tmp_path / "a/run") == losses(tmp_path / "b/run")
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 10  # 5 steps x 2 images, all distinct at epoch 0
    with pytest.raises(InputError, match="other settings"):
        train(config(tmp_path / "b", teacher_file, steps=5, batch_size=3, checkpoint_every=2), progress=False)
    # a finished run can be extended: the schedule is recomputed, the first steps are kept
    train(config(tmp_path / "b", teacher_file, steps=6, batch_size=2, checkpoint_every=2,
                 teacher_cache=str(tmp_path / "cache")), progress=False)
    assert torch.load(tmp_path / "b/run/checkpoints/last.pt", weights_only=True)["step"] == 6
    assert losses(tmp_path / "b/run")[:5] == losses(tmp_path / "a/run")
    # a run started before a setting existed resumes when that setting is at its default
    saved = json.loads((tmp_path / "b/run/config.json").read_text())
    del saved["init_from_teacher"]
    (tmp_path / "b/run/config.json").write_text(json.dumps(saved))
    train(config(tmp_path / "b", teacher_file, steps=6, batch_size=2, checkpoint_every=2,
                 teacher_cache=str(tmp_path / "cache")), progress=False)
    with pytest.raises(InputError, match="init_from_teacher"):
        train(config(tmp_path / "b", teacher_file, steps=6, batch_size=2, checkpoint_every=2, init_from_teacher=True,
                     teacher_cache=str(tmp_path / "cache")), progress=False)


@needs_coco
def test_torchrun_two_processes_stay_in_sync(tmp_path, teacher_file):
    cfg = config(tmp_path, teacher_file, steps=3, batch_size=2).as_dict()
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    yaml_path = tmp_path / "c.yaml"
    yaml_path.write_text(json.dumps(cfg))  # JSON is YAML
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "swiftsam", "train", str(yaml_path), "--no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    card = json.loads((tmp_path / "run" / "model_card.json").read_text())
    assert card["world_size"] == 2 and card["ranks_max_weight_difference"] == 0.0
    assert card["data"]["images_seen"] == 3 * 2 * 2


def test_bad_inputs(tmp_path, teacher_file):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no .jpg or .png images"):
        train(config(tmp_path, teacher_file, images=str(empty)), progress=False)
    broken = tmp_path / "broken"
    (broken / "sub").mkdir(parents=True)
    for i in range(3):
        (broken / "sub" / f"bad{i}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="none of the 3 images could be read"):
        train(config(tmp_path, teacher_file, images=str(broken), out=str(tmp_path / "r0")), progress=False)
    with pytest.raises(InputError, match="needs a teacher"):
        config(tmp_path, teacher_file, teacher=None).validate()
    with pytest.raises(InputError, match="unknown setting"):
        load_config(None, {"recipe": "distill-encoder", "student": "nanosam-r18", "out": "x", "lr_max": 1})
    with pytest.raises(InputError, match="freeze: unknown part"):
        config(tmp_path, teacher_file, recipe="train-masks", freeze=["encoder"], **coco()).validate()
    with pytest.raises(InputError, match="needs COCO-format annotations"):
        config(tmp_path, teacher_file, recipe="distill-full").validate()
    with pytest.raises(InputError, match="focal_weight and dice_weight"):
        config(tmp_path, teacher_file, focal_weight=0, dice_weight=0).validate()
    with pytest.raises(InputError, match="quantize must be none or qat"):
        config(tmp_path, teacher_file, quantize="int4").validate()


@needs_coco
def test_unreadable_images_are_skipped_and_sizes_may_differ(tmp_path, teacher_file):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted((COCO / "train2017").glob("*.jpg"))[:4]:
        shutil.copy(p, folder / p.name)
    (folder / "corrupt.png").write_bytes(b"\x89PNG broken")
    (folder / "empty.jpg").write_bytes(b"")
    # the teacher sees 160 px crops, the student 128 px: the same crop resized for each
    teacher = {"name": "nanosam-r34", "checkpoint": "random", "kwargs": {"input_size": 160}}
    info = train(config(tmp_path, teacher_file, images=str(folder), teacher=teacher, steps=3, batch_size=6),
                 progress=False)
    assert info["data"]["unreadable_images"] == 2 and info["data"]["dataset_size"] == 6
    card = (tmp_path / "run" / "MODEL_CARD.md").read_text()
    assert "2 unreadable images skipped" in card


def test_cli_train_flags_and_errors(tmp_path, capsys):
    from swiftsam.cli import main

    assert main(["train", "--recipe", "distill-encoder", "--student", "nanosam-r18", "--out", str(tmp_path)]) == 2
    assert "needs a teacher" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


@needs_coco
def test_fp16_trains_with_a_grad_scaler(tmp_path):
    """fp16 autocast is slow on CPU: the smallest student and teacher (64 px), one step."""
    tiny = {"kwargs": {"input_size": 64}, "checkpoint": "random"}
    cfg = config(tmp_path, None, steps=1, batch_size=1, amp="fp16", student={"name": "nanosam-r18", **tiny},
                 teacher={"name": "nanosam-r18", **tiny, "seed": 1})
    info = train(cfg, progress=False)
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0 and state["step"] == 1 and math.isfinite(info["final_loss"])


@needs_coco
def test_amp_accumulation_and_cosine_schedule(tmp_path, teacher_file):
    cfg = config(tmp_path, teacher_file, steps=3, batch_size=2, grad_accum=2, amp="bf16", schedule="cosine",
                 warmup_steps=1, lr=1e-3)
    info = train(cfg, progress=False)
    lines = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [ln["lr"] for ln in lines if ln["kind"] == "train"]
    # the rate each step used: 1 warm-up step (1/1 of the peak), then a cosine over the remaining 2 steps
    assert lrs == pytest.approx([1e-3, 1e-3, 0.5e-3], abs=1e-9)
    assert info["data"]["images_seen"] == 3 * 2 * 2 and math.isfinite(info["final_loss"])


def test_init_from_teacher_copies_the_shared_layers(tmp_path, teacher_file):
    from swiftsam.train.recipes import DistillEncoder

    cfg = config(tmp_path, teacher_file, init_from_teacher=True)
    recipe = DistillEncoder(cfg, torch.device("cpu"), lambda: torch.autocast("cpu", enabled=False))
    t, s = recipe.teacher.image_encoder.state_dict(), recipe.student.image_encoder.state_dict()
    # ResNet18's blocks are ResNet34's first two of each stage; the neck is the same
    for key in ("trunk.conv1.weight", "trunk.layer3.1.conv2.weight", "up.0.weight", "proj.0.weight"):
        assert torch.equal(s[key], t[key]), key
    assert sum(torch.equal(v, t[k]) for k, v in s.items() if k in t) == len(s)
    fresh = DistillEncoder(config(tmp_path, teacher_file), torch.device("cpu"), lambda: None)
    assert not torch.equal(fresh.student.image_encoder.state_dict()["trunk.conv1.weight"], t["trunk.conv1.weight"])
    with pytest.raises(InputError, match="init_from_teacher needs a teacher"):
        config(tmp_path, None, recipe="train-masks", teacher=None, init_from_teacher=True, **coco()).validate()

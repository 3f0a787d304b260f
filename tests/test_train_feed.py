"""The trainer that feeds the GPU (issue 19): each logged interval of metrics.jsonl splits its wall time into
data-wait, compute and other time; the loader pins memory on a GPU and keeps workers with prefetched batches;
batches go to the device with asynchronous copies; the workers make each model's encoder input (exactly what
``model.preprocess`` makes), the low-resolution targets and the teacher-cache reads. Tiny 64 px models on coco-mini
keep it on the CPU."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

import swiftsam
from swiftsam.train import Interrupted, TrainConfig, train
from swiftsam.train import distributed as ddp
from swiftsam.train import recipes as recipes_mod
from swiftsam.train import trainer as trainer_mod
from swiftsam.train.data import CocoObjects, EncoderInputs, collate, crop_box, read_rgb, rng_for, to_device
from swiftsam.train.prompts import low_res_targets
from swiftsam.zoo.checkpoint import read_state_dict
from swiftsam.transforms import preprocess_image
from tests.conftest import SHARED, small_sam2

COCO = SHARED / "coco-mini"
needs_coco = pytest.mark.skipif(not (COCO / "train2017").is_dir(), reason="needs ../shared/data/coco-mini")
FEED = ("interval_s", "data_wait_s", "compute_s", "other_s", "data_wait_fraction", "interval_images_per_s")


def tiny(tmp_path, **kw) -> TrainConfig:
    model = {"name": "nanosam-r18", "checkpoint": "random", "kwargs": {"input_size": 64}}
    base = dict(recipe="distill-encoder", student=model, teacher={**model, "seed": 1}, images=str(COCO / "train2017"),
                out=str(tmp_path / "run"), steps=2, batch_size=1, log_every=1, checkpoint_every=1, tensorboard=False,
                device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def train_lines(tmp_path) -> list[dict]:
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


@needs_coco
@pytest.mark.parametrize("workers", [0, 1])
def test_each_logged_interval_splits_its_wall_time(tmp_path, workers):
    t = time.perf_counter()
    train(tiny(tmp_path, workers=workers), progress=False)
    elapsed = time.perf_counter() - t
    lines = train_lines(tmp_path)
    assert [r["step"] for r in lines] == [1, 2]
    for r in lines:
        assert set(FEED) <= set(r), r
        assert all(r[k] >= 0 for k in FEED), r
        assert r["data_wait_s"] + r["compute_s"] + r["other_s"] == pytest.approx(r["interval_s"], rel=1e-6)
        assert r["compute_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1
        assert r["interval_images_per_s"] == pytest.approx(1 / r["interval_s"], rel=1e-6)  # 1 step x batch 1
    # the intervals follow each other: together they fit in the call's own wall time
    assert sum(r["interval_s"] for r in lines) <= elapsed
    # step 1's checkpoint is written after step 1 is logged: the second interval's "other" time holds it
    assert lines[1]["other_s"] > 0


@needs_coco
def test_a_resumed_run_counts_only_its_own_images(tmp_path):
    """images_per_s after a resume divided every image seen since step 0 by this process's time."""
    cfg = tiny(tmp_path, steps=3)
    with pytest.raises(Interrupted):
        train(cfg, progress=False, stop_after=1)
    train(cfg, progress=False)
    first_after = [r for r in train_lines(tmp_path) if r["step"] == 2][0]
    # the first interval of the resumed run starts when its rate's clock does: the two rates agree
    assert first_after["images_per_s"] == pytest.approx(first_after["interval_images_per_s"], rel=1e-6)


@needs_coco
def test_loader_pins_memory_and_prefetches_on_a_gpu(tmp_path, monkeypatch):
    """The DataLoader's settings when the device is a GPU (recorded, not run: the tests need no GPU)."""
    seen = {}

    def loader(*args, **kwargs):
        seen.update(kwargs)
        return None

    tr = trainer_mod.Trainer(tiny(tmp_path, workers=2), ddp.Dist(), progress=False)
    monkeypatch.setattr(torch.utils.data, "DataLoader", loader)
    tr.device = torch.device("cuda", 0)
    tr.build_data()
    assert seen["pin_memory"] is True and seen["num_workers"] == 2
    assert seen["persistent_workers"] is True and seen["prefetch_factor"] == trainer_mod.PREFETCH_FACTOR
    tr.config.workers = 0  # in-process loading: no workers to keep or prefetch with
    tr.device = torch.device("cpu")
    tr.build_data()
    assert seen["pin_memory"] is False and seen["persistent_workers"] is False and seen["prefetch_factor"] is None


def test_to_device_moves_the_stacked_tensors_only():
    masks = [torch.zeros(2, 4, 4, dtype=torch.bool)]
    batch = {"index": [3], "student": torch.zeros(1, 3, 8, 8), "masks": masks}
    assert to_device(batch, torch.device("cpu")) is batch
    moved = to_device(batch, torch.device("meta"))
    assert moved["student"].device.type == "meta" and moved["masks"] is masks and moved["index"] == [3]


# ------------------------------------------------------------------ encoder inputs made in the loader's workers
# The recipes used to resize, normalise and pad each image in the training loop (``Recipe._embed`` ran
# ``model.preprocess`` per image). The datasets now hand over each model's encoder input, made in the workers:
# float32 on the CPU, uint8 (a quarter of the bytes to pin and copy) normalised on the device on a GPU. Both must
# give exactly what ``model.preprocess`` gave.
ANNOTATIONS = COCO / "annotations" / "instances_train2017.json"
CPU = torch.device("cpu")


def recipe_for(tmp_path, monkeypatch, uint8: bool, **kw):
    monkeypatch.setattr(recipes_mod.Recipe, "uint8_inputs", property(lambda self: uint8))
    return recipes_mod.make_recipe(tiny(tmp_path, **kw), CPU, lambda: torch.autocast("cpu", enabled=False))


@needs_coco
@pytest.mark.parametrize("uint8", [False, True])
def test_prompted_batches_carry_each_models_encoder_input_exactly(tmp_path, monkeypatch, uint8):
    """distill-full with a teacher of another input size and pixel mean: each model's input from the batch equals
    ``torch.cat([model.preprocess(im)[0] ...])`` of the prompt-frame images the loop preprocessed before."""
    student = {"name": "nanosam-r18", "checkpoint": "random", "kwargs": {"input_size": 64}}
    teacher = {"name": "nanosam-r18", "checkpoint": "random", "kwargs": {"input_size": 96}, "seed": 1}
    recipe = recipe_for(tmp_path, monkeypatch, uint8, recipe="distill-full", student=student, teacher=teacher,
                        annotations=str(ANNOTATIONS), objects_per_image=2)
    recipe.teacher.contract = recipe.teacher.contract.replace(
        image=dataclasses.replace(recipe.teacher.spec, pixel_mean=(100.0, 110.0, 120.0)))
    data = recipe.dataset()
    assert data.inputs.key == {"student": "student", "teacher": "teacher"}
    old = CocoObjects(COCO / "train2017", ANNOTATIONS, data.prompt_size, 2, 0)  # the samples as they were
    items = [(3, 0), (0, 1), (7, 0)]
    batch, before = collate([data[i] for i in items]), collate([old[i] for i in items])
    assert "image" not in batch  # the prompt-frame image stays in the worker
    assert batch["student"].dtype == (torch.uint8 if uint8 else torch.float32)
    for role, model in (("student", recipe.student), ("teacher", recipe.teacher)):
        got = recipe._input(batch, role)
        assert torch.equal(got, torch.cat([model.preprocess(im)[0] for im in before["image"]])), role
    # the low-resolution targets come from the workers too, concatenated over the batch
    assert all(torch.equal(a, b) for a, b in zip(batch["masks"], before["masks"]))
    want = low_res_targets(before["masks"], data.prompt_size, recipe.student.contract.mask_input_size[0])
    assert torch.equal(batch["low_res"], want)


@needs_coco
def test_models_with_equal_inputs_share_one_and_sam2_inputs_stay_float():
    """A teacher whose input equals the student's travels once; a SAM 2 input (square, resized in float) is made
    as its ``preprocess`` makes it."""
    files = sorted((COCO / "train2017").iterdir())[:2]
    images = [read_rgb(f) for f in files]
    sam2 = small_sam2(64)  # square geometry, ImageNet mean / std
    sam1_spec = swiftsam.build("nanosam-r18", input_size=64).spec
    other_mean = dataclasses.replace(sam1_spec, pixel_mean=(0.0, 0.0, 0.0))
    # float inputs: shared only by equal specs; uint8 inputs: by equal sizes (normalised per model on the device)
    assert EncoderInputs({"student": sam1_spec, "teacher": other_mean}).key["teacher"] == "teacher"
    assert EncoderInputs({"student": sam1_spec, "teacher": sam1_spec}).key["teacher"] == "student"
    shared = EncoderInputs({"student": sam1_spec, "teacher": other_mean}, uint8=True)
    assert shared.key["teacher"] == "student"
    batch = collate([shared.sample(im) for im in images])
    assert set(batch) == {"student", "student_hw"}
    for role, spec in (("student", sam1_spec), ("teacher", other_mean)):
        want = torch.cat([cpu_preprocess(im, spec) for im in images])
        assert torch.equal(shared.batch_input(batch, role), want), role
    # SAM 2 resizes in float: its input stays float32 even when uint8 is asked for, and equals its preprocess
    mixed = EncoderInputs({"student": sam1_spec, "teacher": sam2.spec}, uint8=True)
    batch = collate([mixed.sample(im) for im in images])
    assert batch["teacher"].dtype == torch.float32 and batch["student"].dtype == torch.uint8
    assert torch.equal(mixed.batch_input(batch, "teacher"), torch.cat([sam2.preprocess(im)[0] for im in images]))


def cpu_preprocess(image: np.ndarray, spec) -> torch.Tensor:
    return preprocess_image(image, spec, "cpu")[0]


def old_distill_input(image: np.ndarray, box, spec) -> torch.Tensor:
    """DistillImages' input before the change: the crop resized by PIL, normalised in numpy."""
    top, left, ch, cw = box
    crop = Image.fromarray(image[top:top + ch, left:left + cw])
    x = np.asarray(crop.resize((spec.input_size,) * 2, Image.BILINEAR)).astype(np.float32)
    x = (x - np.asarray(spec.pixel_mean, dtype=np.float32)) / np.asarray(spec.pixel_std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


@needs_coco
@pytest.mark.parametrize("pair", ["sam1", "sam2"])
@pytest.mark.parametrize("uint8", [False, True])
def test_distillation_crops_keep_their_values(tmp_path, monkeypatch, pair, uint8):
    """distill-encoder, a SAM 1 pair of two input sizes and a SAM 2 pair: each model's input from the batch is
    the crop DistillImages made before (PIL resize, numpy normalisation), whether normalised in the workers or
    handed over as uint8 and normalised on the device."""
    if pair == "sam1":
        student = {"name": "nanosam-r18", "checkpoint": "random", "kwargs": {"input_size": 64}}
        teacher = {"name": "nanosam-r18", "checkpoint": "random", "kwargs": {"input_size": 96}, "seed": 1}
    else:
        student = {"name": "nanosam2-resnet18", "checkpoint": "random", "kwargs": {"input_size": 64}}
        teacher = {"name": "sam2.1-hiera-tiny", "checkpoint": "random",
                   "kwargs": {"input_size": 64, "depth": [1, 1, 1, 1]}, "seed": 1}
    recipe = recipe_for(tmp_path, monkeypatch, uint8, student=student, teacher=teacher, level_weights=[1, 1, 1])
    data = recipe.dataset()
    items = [(2, 0), (5, 3)]
    batch = collate([data[i] for i in items])
    assert batch["student"].dtype == (torch.uint8 if uint8 else torch.float32)
    for role, model in (("student", recipe.student), ("teacher", recipe.teacher)):
        want = []
        for index, epoch in items:
            image = read_rgb(data.files[index])
            box = crop_box(rng_for(0, index, epoch), *image.shape[:2], data.scale, data.ratio)
            want.append(old_distill_input(image, box, model.spec))
        assert torch.equal(recipe._input(batch, role), torch.stack(want)), role


@needs_coco
def test_the_teacher_cache_is_read_in_the_workers_and_still_hits(tmp_path, monkeypatch, caplog):
    """uint8 inputs (a GPU run's), the cache read by the loader: the teacher runs on the cache's misses only (a
    subset of the batch's rows), what the cache gives back is what the teacher gives for the whole batch, a
    batch prepared ahead of the cache's files still hits, and a damaged cache file is a miss that the teacher
    rewrites."""
    recipe = recipe_for(tmp_path, monkeypatch, True, teacher_cache=str(tmp_path / "cache"))
    data = recipe.dataset()
    stale = batch = collate([data[(i, 0)] for i in (4, 9, 1)])  # prepared before the cache had any of them
    want = recipe.teacher.image_encoder(recipe._input(batch, "teacher")).detach().half().float()
    recipe.teacher_embeddings(collate([data[(9, 0)]]))  # fills the cache for one image
    calls = []
    recipe.teacher.image_encoder.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    loader = torch.utils.data.DataLoader(data, batch_sampler=[[(4, 0), (9, 0), (1, 0)]] * 2, collate_fn=collate,
                                         num_workers=1)
    batches = iter(loader)
    batch = next(batches)  # read from the cache in a worker
    assert [saved is None for saved in batch["cached"]] == [True, False, True]
    got = recipe.teacher_embeddings(batch)[0]
    assert calls == [2]  # the two misses
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3)  # fp16 of a batch of 3 vs of 2 and 1
    batch = collate([data[(i, 0)] for i in (4, 9, 1)])
    assert all(saved is not None for saved in batch["cached"])
    assert torch.equal(recipe.teacher_embeddings(batch)[0], got) and calls == [2]  # every row a hit now
    # a batch a worker prepared before the loop wrote its files: the loop looks its misses up again
    assert all(saved is None for saved in stale["cached"])
    assert torch.equal(recipe.teacher_embeddings(stale)[0], got) and calls == [2]
    data.cache_path(4, 0).write_bytes(b"not a tensor file")
    batch = collate([data[(i, 0)] for i in (4, 9, 1)])
    assert "cannot be read" in caplog.text and batch["cached"][0] is None
    again = recipe.teacher_embeddings(batch)[0]
    assert calls == [2, 1] and torch.equal(again[1:], got[1:])
    torch.testing.assert_close(again, got, rtol=0, atol=1e-3)
    assert data.cached(4, 0) is not None  # rewritten


@needs_coco
@pytest.mark.usefixtures("one_thread")
def test_a_training_step_is_the_same_with_uint8_inputs(tmp_path, monkeypatch):
    """train-masks, one step: the loss and the trained weights do not depend on whether the encoder input came
    normalised (in the loop's process) or as uint8 (from a loader worker) normalised in the loop."""
    model = {"name": "nanosam-r18", "checkpoint": "random", "kwargs": {"input_size": 64}}
    results = []
    for uint8 in (False, True):
        monkeypatch.setattr(recipes_mod.Recipe, "uint8_inputs", property(lambda self, u=uint8: u))
        out = tmp_path / str(uint8)
        cfg = tiny(out, recipe="train-masks", student=model, teacher=None, annotations=str(ANNOTATIONS),
                   objects_per_image=1, prompt_rounds=1, steps=1, batch_size=2, workers=int(uint8))
        train(cfg, progress=False)
        loss = train_lines(out)[0]["loss"]
        results.append((loss, read_state_dict(out / "run" / "model.pt")))
    (loss_a, state_a), (loss_b, state_b) = results
    assert loss_a == loss_b
    assert state_a.keys() == state_b.keys() and all(torch.equal(state_a[k], state_b[k]) for k in state_a)

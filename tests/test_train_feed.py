"""The trainer that feeds the GPU (issue 19): each logged interval of metrics.jsonl splits its wall time into
data-wait, compute and other time; the loader pins memory on a GPU and keeps workers with prefetched batches;
batches go to the device with asynchronous copies. Tiny 64 px models on coco-mini keep it on the CPU."""

from __future__ import annotations

import json
import time

import pytest
import torch

from swiftsam.train import Interrupted, TrainConfig, train
from swiftsam.train import distributed as ddp
from swiftsam.train import trainer as trainer_mod
from swiftsam.train.data import to_device
from tests.conftest import SHARED

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

"""``swiftsam label --ray``: ``label.label_one`` on Ray Data actors, for a folder or a manifest of many images.

Ray Data reads the list of paths left to do, ``map_batches`` hands them to a pool of ``Labeler`` actors (each
loads the model once; ``num_gpus`` each when the model runs on a GPU; a pool of ``concurrency`` of them) and streams the
outcomes back as they finish. ``label.label_images`` consumes them (``map_images``): the same progress log, so a
run resumes after the images it finished (Ray or not), the same report of bad images and the same COCO results
file as without Ray. ``swiftsam everything --ray`` likewise (``ray_everything``: ``EverythingWorker`` actors run
``run_everything`` per image in one shared output folder). ``ray`` is imported only when a run starts
(``pip install 'swiftsam[ray]'``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors
from ..errors import InputError, SwiftSamError
from ..image_io import MaxPixels


class _Actor:
    """A Ray Data actor: ``setup`` once (model, generator: an error every image would meet is kept as a ``fatal``
    outcome, with the error's class, for the driver to raise, not a failed Ray task), then ``one(path)`` per image;
    each outcome goes back JSON-encoded."""

    def __init__(self, setup: Callable[[], None]) -> None:
        self.fatal: dict | None = None
        try:
            setup()
        except SwiftSamError as e:  # a bad checkpoint, no GPU, settings already in --out
            self.fatal = {"fatal": str(e), "kind": type(e).__name__}

    def one(self, path: Path) -> dict:
        raise NotImplementedError

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        for path in batch["path"]:
            path = Path(str(path))
            if self.fatal is not None:
                out.append(json.dumps({"image": path.name, **self.fatal}))
                continue
            try:
                outcome = self.one(path)
            except SwiftSamError as e:  # e.g. --strict's first failed image
                outcome = {"image": path.name, "fatal": str(e), "kind": type(e).__name__}
            out.append(json.dumps(outcome))
        return {"outcome": np.array(out, dtype=object)}


class Labeler(_Actor):
    """One Ray actor: the predictor (``make_predictor()``) and the prompt source (``make_prompts()``) made once,
    then ``label_one`` per path."""

    def __init__(self, make_predictor: Callable[[], Any], make_prompts: Callable[[], Callable], ids: dict[str, int],
                 candidates: str, max_pixels: MaxPixels) -> None:
        self.ids, self.candidates, self.max_pixels = ids, candidates, max_pixels

        def setup() -> None:
            self.predictor = make_predictor()
            self.prompts_for = make_prompts()

        super().__init__(setup)

    def one(self, path: Path) -> dict:
        from .label import label_one

        return label_one(self.predictor, path, self.ids[path.name], self.prompts_for, self.candidates,
                         self.max_pixels)


def read_manifest(path: str | Path) -> list[Path]:
    """A manifest: a text file of image paths, one a line (relative ones from the manifest's folder; blank lines
    and ``#`` comments skipped). Results are keyed by file name, so two paths with one name are refused."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read the manifest {path}: {e}; give a text file of image paths, one a line."
                         ) from None
    images, seen = [], {}
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(line).expanduser()
        p = p if p.is_absolute() else path.parent / p
        if p.name in seen:
            raise InputError(f"{path} line {n}: {p} has the same file name as line {seen[p.name]}; results are keyed "
                             f"by file name, so give each image a distinct name.")
        seen[p.name] = n
        images.append(p)
    if not images:
        raise InputError(f"the manifest {path} lists no images: give a text file of image paths, one a line.")
    return images


def ray_map_images(make_predictor: Callable[[], Any], make_prompts: Callable[[], Callable], ids: dict[str, int], *,
                   candidates: str = "multimask", max_pixels: MaxPixels = "pil", concurrency: int = 1,
                   num_gpus: float = 0.0) -> Callable[[list[Path]], Iterator[dict]]:
    """``label_images``' ``map_images`` on the connected Ray cluster (``ray_serve``-free: ``ray.init`` first):
    ``concurrency`` actors, each with ``num_gpus`` GPUs (0: one CPU each)."""
    check_concurrency(concurrency)

    def run(todo: list[Path]) -> Iterator[dict]:
        if not todo:
            return
        import ray

        ds = ray.data.from_items([{"path": str(p)} for p in todo], override_num_blocks=min(len(todo), 200))
        ds = ds.map_batches(Labeler, batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency),
                            num_gpus=num_gpus if num_gpus else None, num_cpus=None if num_gpus else 1,
                            fn_constructor_kwargs={"make_predictor": make_predictor, "make_prompts": make_prompts,
                                                   "ids": ids, "candidates": candidates, "max_pixels": max_pixels})
        for row in ds.iter_rows():
            outcome = json.loads(row["outcome"])
            if "fatal" in outcome:
                _raise_fatal(outcome)
            yield outcome

    return run


def _raise_fatal(outcome: dict) -> None:
    """An actor's ``fatal`` outcome (an error every image would meet) raised on the driver as its own class."""
    kind = getattr(errors, outcome["kind"], SwiftSamError)
    kind = kind if isinstance(kind, type) and issubclass(kind, SwiftSamError) else SwiftSamError
    raise kind(outcome["fatal"])


class EverythingWorker(_Actor):
    """One Ray actor of ``swiftsam everything --ray``: the mask generator and its recorded settings
    (``make_generator()`` -> ``(generator, settings)``) made once, then ``run_everything`` per image path (it locks
    the image, writes atomically and skips images done, so actors share ``out``); each image's summary comes back."""

    def __init__(self, make_generator: Callable[[], tuple[Any, dict]], out: str, boxes: dict | None,
                 options: dict) -> None:
        self.out, self.boxes, self.options = out, boxes, options

        def setup() -> None:
            self.generator, self.settings = make_generator()

        super().__init__(setup)

    def one(self, path: Path) -> dict:
        from ..everything.runner import run_everything

        return run_everything(self.generator, path, self.out, self.settings,
                              boxes=None if self.boxes is None else {path: self.boxes[path]},
                              progress=False, **self.options)


def merge_everything_summaries(parts: list[dict], images: int) -> dict:
    """One run's summary from its per-image ``run_everything`` summaries: counts added, lists joined."""
    from ..everything.runner import SUMMARY_FORMAT

    merged: dict = {"format": SUMMARY_FORMAT, "images": images, "done": 0, "skipped": 0, "failed": [], "empty": [],
                    "busy": [], "redone": [], "boxes_clipped": 0, "boxes_dropped": []}
    for part in parts:
        for key in ("done", "skipped", "boxes_clipped"):
            merged[key] += part.get(key, 0)
        for key in ("failed", "empty", "busy", "redone", "boxes_dropped"):
            merged[key] += part.get(key, [])
    return merged


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise InputError(f"--ray-concurrency must be 1 or more actors, got {concurrency}.")


def ray_everything(make_generator: Callable[[], tuple[Any, dict]], images: list[Path], out: str | Path, *,
                   boxes: dict | None = None, overwrite: bool = False, strict: bool = False,
                   max_pixels: MaxPixels = "pil", concurrency: int = 1, num_gpus: float = 0.0) -> dict:
    """``run_everything`` over ``images`` on ``concurrency`` Ray Data actors (``EverythingWorker``; ``num_gpus``
    each, 0: one CPU each) of the connected cluster (``ray.init`` first). Returns the merged summary, written once
    to ``out/everything.summary.json`` (atomically) after the last image, over the actors' per-image ones."""
    from ..everything.runner import SUMMARY_NAME
    from ..utils import atomic_path

    check_concurrency(concurrency)
    stems = [im.stem for im in images]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise InputError(f"images share a name stem ({', '.join(dupes[:5])}): outputs would overwrite each other.")
    import ray

    ds = ray.data.from_items([{"path": str(p)} for p in images], override_num_blocks=min(len(images), 200))
    ds = ds.map_batches(EverythingWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency),
                        num_gpus=num_gpus if num_gpus else None, num_cpus=None if num_gpus else 1,
                        fn_constructor_kwargs={"make_generator": make_generator, "out": str(out), "boxes": boxes,
                                               "options": {"overwrite": overwrite, "strict": strict,
                                                           "max_pixels": max_pixels}})
    parts = []
    for row in ds.iter_rows():
        part = json.loads(row["outcome"])
        if "fatal" in part:
            _raise_fatal(part)
        parts.append(part)
    summary = merge_everything_summaries(parts, len(images))
    with atomic_path(Path(out) / SUMMARY_NAME) as tmp:
        tmp.write_text(json.dumps(summary, indent=2))
    return summary

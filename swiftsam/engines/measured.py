"""Defaults of the engines measured on real machines, per device, model family and precision (one home for the
tables the engines read at construction; ``engines.auto`` keeps its engine choice table)."""

from __future__ import annotations

from ..modeling.sam import Sam


def family(model: Sam) -> tuple[str | None, str | None]:
    """(zoo name, family) of a model; None for what it has not (a model built outside the zoo)."""
    if not model.zoo_name:
        return None, None
    from ..zoo import get_entry

    try:
        return model.zoo_name, get_entry(model.zoo_name).family
    except Exception:  # a model named outside the zoo
        return model.zoo_name, None


# (device type, family or zoo name, precision) -> whether the torch engine's encoder runs channels_last by default:
# the faster layout, measured (a zoo name wins over its family; unmeasured: torch's own NCHW layout). channels_last
# where it was >= 1.05x faster. CPU: benchmarks/channels_last.py on the 2-core AMD EPYC, encoder at batch 1, best
# of two processes each (benchmarks/channels_last.json; NCHW / channels_last ms). CUDA: issue 19's H200 profile
# (EfficientViT-SAM L0 bf16 batch 32: 0.42x the authors' code channels_last, equal to it in NCHW).
CHANNELS_LAST: dict[tuple[str, str, str], bool] = {
    ("cpu", "tinyvit", "fp32"): True,  # MobileSAM 770 / 725
    ("cpu", "tinyvit", "bf16"): True,  # 494 / 382
    ("cpu", "nanosam", "fp32"): True,  # 572 / 464
    ("cpu", "nanosam", "bf16"): True,  # 379 / 251
    ("cpu", "swiftsam", "fp32"): True,  # 71 / 62
    ("cpu", "swiftsam", "bf16"): True,  # 46 / 33
    ("cpu", "efficientvit", "fp32"): False,  # L0 465 / 451, XL0 2,111 / 2,117
    ("cpu", "efficientvit", "bf16"): True,  # L0 308 / 292, XL0 1,381 / 1,258
    ("cpu", "sam2", "fp32"): False,  # hiera-tiny 2,127 / 2,224
    ("cpu", "sam2", "bf16"): False,  # 1,367 / 1,402
    ("cuda", "efficientvit", "bf16"): False,
}


def default_channels_last(model: Sam, precision: str) -> bool:
    """The torch engine's measured default memory format for ``model`` (where it lives) in ``precision``."""
    name, fam = family(model)
    device = model.device.type
    for key in ((device, name, precision), (device, fam, precision)):
        if key in CHANNELS_LAST:
            return CHANNELS_LAST[key]
    return False

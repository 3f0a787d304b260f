"""Write the project's own student into the package as fp16 files (swiftsam/weights/) and record their sha256
in swiftsam/zoo/models.py. Run after training or fine-tuning the student:

    python scripts/ship_own_models.py --student out/models/r18/model.pt

Its encoder goes to swiftsam-r18-encoder.fp16.pt and its prompt encoder + mask decoder to
swiftsam-decoder.fp16.pt. The teacher (swiftsam-r34) is not bundled (scripts/restore_teacher.py).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from swiftsam.zoo import read_state_dict, write_fp16
from swiftsam.zoo.bundled import WEIGHTS_DIR

MODELS = Path(__file__).resolve().parents[1] / "swiftsam" / "zoo" / "models.py"
PARTS = {"swiftsam-r18-encoder.fp16.pt": ("image_encoder.",),
         "swiftsam-decoder.fp16.pt": ("prompt_encoder.", "mask_decoder.")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="the student's checkpoint (a swiftsam-r18 state dict)")
    args = ap.parse_args()
    student = read_state_dict(args.student)
    WEIGHTS_DIR.mkdir(exist_ok=True)
    shas = {name: write_fp16(student, WEIGHTS_DIR / name, prefixes) for name, prefixes in PARTS.items()}
    text = MODELS.read_text()
    for name, sha in shas.items():
        text, n = re.subn(rf'("{re.escape(name)}": )"[0-9a-fA-F]+"', rf'\1"{sha}"', text)
        if n != 1:
            raise SystemExit(f"{MODELS} has no _OWN_SHA line for {name}")
    MODELS.write_text(text)
    for name, sha in shas.items():
        print(f"{name}  {(WEIGHTS_DIR / name).stat().st_size / 2**20:.1f} MiB  {sha}")


if __name__ == "__main__":
    main()

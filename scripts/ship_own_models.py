"""Write the project's own models into the package as fp16 files (swiftsam/weights/) and record their
sha256 in swiftsam/zoo/models.py. Run after training the teacher and distilling the student:

    python scripts/ship_own_models.py --teacher out/models/teacher/model.pt --student out/models/r18/model.pt
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from swiftsam.zoo import read_state_dict, write_fp16
from swiftsam.zoo.bundled import WEIGHTS_DIR

MODELS = Path(__file__).resolve().parents[1] / "swiftsam" / "zoo" / "models.py"
PROMPT_SIDE = ("prompt_encoder.", "mask_decoder.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--student", required=True)
    args = ap.parse_args()
    teacher, student = read_state_dict(args.teacher), read_state_dict(args.student)
    differ = [k for k in teacher if k.startswith(PROMPT_SIDE) and not torch.equal(teacher[k], student[k])]
    if differ:
        raise SystemExit(f"the student's prompt side is not the teacher's ({differ[:3]}): was it distilled "
                         f"with distill-encoder from this teacher?")
    WEIGHTS_DIR.mkdir(exist_ok=True)
    shas = {
        "swiftsam-decoder.fp16.pt": write_fp16(teacher, WEIGHTS_DIR / "swiftsam-decoder.fp16.pt", PROMPT_SIDE),
        "swiftsam-r34-encoder.fp16.pt": write_fp16(teacher, WEIGHTS_DIR / "swiftsam-r34-encoder.fp16.pt",
                                                   ("image_encoder.",)),
        "swiftsam-r18-encoder.fp16.pt": write_fp16(student, WEIGHTS_DIR / "swiftsam-r18-encoder.fp16.pt",
                                                   ("image_encoder.",)),
    }
    text = MODELS.read_text()
    for name, sha in shas.items():
        text, n = re.subn(rf'("{re.escape(name)}": )"[0-9a-fA-FTOD]+"', rf'\1"{sha}"', text)
        if n != 1:
            raise SystemExit(f"{MODELS} has no _OWN_SHA line for {name}")
    MODELS.write_text(text)
    for name, sha in shas.items():
        print(f"{name}  {(WEIGHTS_DIR / name).stat().st_size / 2**20:.1f} MiB  {sha}")


if __name__ == "__main__":
    main()

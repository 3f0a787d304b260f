"""Restore the project's teacher, swiftsam-r34, from the git history into one checkpoint file.

Its fp16 encoder shipped in the package until the tree had to shrink (the GPU test machine takes a working
tree of at most 64 MiB); the student's decoder file, still bundled, is the teacher's decoder. Needs a git
clone of swiftsam (the file is read with `git show`):

    python scripts/restore_teacher.py --out swiftsam-r34.pt
    swiftsam segment IMAGE --model swiftsam-r34 --checkpoint swiftsam-r34.pt --box ... --out m.png

Or retrain it: `swiftsam train benchmarks/configs/swiftsam-teacher.yaml` (docs/models.md).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
from pathlib import Path

import torch

from swiftsam.zoo import get_entry
from swiftsam.utils import atomic_path

ROOT = Path(__file__).resolve().parents[1]
COMMIT = "5cc41e9"  # the last commit that shipped the teacher
FILES = {  # the teacher's encoder, and its decoder (shared with the student of that commit)
    "swiftsam/weights/swiftsam-r34-encoder.fp16.pt": "026f8b4e449d16313f46a2d4656a6d9fc2761251dc4b4422384ec6089dcec29c",
    "swiftsam/weights/swiftsam-decoder.fp16.pt": "4fb600b4c4ea77dd8f77a03d4ba604cc61350b5b4059ca4276dae296b3176aa5",
}


def _from_git(path: str, sha256: str) -> dict[str, torch.Tensor]:
    try:
        blob = subprocess.run(["git", "-C", str(ROOT), "show", f"{COMMIT}:{path}"], check=True,
                              capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = (getattr(e, "stderr", b"") or b"").decode(errors="replace").strip()
        raise SystemExit(f"cannot read {path} at {COMMIT} from git ({detail or e}): run this from a full git "
                         f"clone of swiftsam, or retrain the teacher.") from None
    got = hashlib.sha256(blob).hexdigest()
    if got != sha256:
        raise SystemExit(f"{path} from git has sha256 {got[:12]}..., expected {sha256[:12]}...")
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="checkpoint to write (fp32 state dict)")
    args = ap.parse_args()
    state: dict[str, torch.Tensor] = {}
    for path, sha256 in FILES.items():
        state.update({k: v.float() for k, v in _from_git(path, sha256).items()})
    model = get_entry("swiftsam-r34").build()
    model.load_state_dict(state, strict=True)  # every key of the teacher, nothing else
    with atomic_path(args.out) as tmp:
        torch.save(model.state_dict(), tmp)
    print(f"wrote {args.out}: swiftsam-r34 (load with --model swiftsam-r34 --checkpoint {args.out})")


if __name__ == "__main__":
    main()

"""The image-only tracker on DAVIS 2016 (benchmarks/apps.md): J (mean IoU over frames 1..N-1, from the first
frame's ground-truth mask) per prompt variant.

    python benchmarks/apps_track.py --root ../shared/data/davis2016 --out benchmarks/apps_track.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from swiftsam.apps.tracker import TrackerConfig, evaluate_davis  # noqa: E402
from swiftsam.predictor import Predictor  # noqa: E402

VARIANTS = {  # TrackerConfig's default: box (no margin) + the previous logits as mask input
    "box m0 + mask input (default)": TrackerConfig(),
    "box m0.1 + point + mask input": TrackerConfig(point=True, box_margin=0.1),
    "box m0 + point + mask input": TrackerConfig(point=True),
    "box m0.1 + mask input": TrackerConfig(box_margin=0.1),
    "point + mask input": TrackerConfig(box=False, point=True),
    "box m0.1 + point": TrackerConfig(point=True, mask_input=False, box_margin=0.1),
    "box m0.1": TrackerConfig(mask_input=False, box_margin=0.1),
    "box m0 + mask input, no loss detection": TrackerConfig(max_area_change=1e9),
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--root", required=True)
    p.add_argument("--model", default="swiftsam-r18")
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--max-frames", type=int)
    p.add_argument("--out")
    args = p.parse_args()
    predictor = Predictor(args.model)
    results = {}
    for name in args.variants:
        t0 = time.time()
        r = evaluate_davis(predictor, args.root, config=VARIANTS[name], max_frames=args.max_frames)
        results[name] = r
        seqs = "  ".join(f"{k} {v['j']:.3f} ({v['lost']} lost)" for k, v in r["sequences"].items())
        print(f"{r['j_mean']:.4f}  {name}  | {seqs}  [{time.time() - t0:.0f} s]", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"model": args.model, "root": args.root, "max_frames": args.max_frames,
                                              "results": results}, indent=2))


if __name__ == "__main__":
    main()

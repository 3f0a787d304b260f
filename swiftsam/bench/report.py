"""Reading a ``swiftsam bench`` result: a terminal table, and a latency-vs-throughput chart (PNG).

The chart is drawn with Pillow (already a dependency) so the core needs no plotting library.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict

from PIL import Image, ImageDraw, ImageFont

from ..utils import atomic_path

COLUMNS = ("model", "implementation", "precision", "size", "stage", "bs", "prompts", "median ms", "p90 ms",
           "min ms", "throughput", "peak MB", "vs ref", "vs ref fp32")


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def table(doc: dict) -> str:
    """The results as an aligned text table, one row per measured cell, then the skipped cells."""
    speed = {(s["model"], s["engine"], s["precision"], s["input_size"], s["stage"], s["batch_size"], s["prompts"]): s
             for s in doc.get("speedups", [])}
    lines = [list(COLUMNS)]
    for r in doc["results"]:
        s = speed.get((r["model"], r["engine"], r["precision"], r["input_size"], r["stage"], r["batch_size"],
                       r["prompts"]), {})
        impl = r["engine"] if r["implementation"] == "swiftsam" else f"reference ({r['describe'].split()[0]})"
        lines.append([
            r["model"], impl, r["precision"], str(r["input_size"]), r["stage"], str(r["batch_size"]),
            str(r["prompts"] or "-"), _fmt(r["median_s"] * 1e3, 2), _fmt(r["p90_s"] * 1e3, 2), _fmt(r["min_s"] * 1e3, 2),
            f"{_fmt(r['throughput'])} {r['throughput_unit']}", _fmt(r["peak_memory_mb"], 0),
            f"{s['speedup_vs_reference']:.2f}x" if s.get("speedup_vs_reference") else "-",
            f"{s['speedup_vs_reference_fp32']:.2f}x" if s.get("speedup_vs_reference_fp32") else "-",
        ])
    widths = [max(len(row[i]) for row in lines) for i in range(len(COLUMNS))]
    right = {i for i, c in enumerate(COLUMNS) if c in ("bs", "prompts", "median ms", "p90 ms", "min ms", "throughput",
                                                         "peak MB", "vs ref", "vs ref fp32", "size")}
    out = []
    for n, row in enumerate(lines):
        out.append("  ".join(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    groups: dict[tuple, int] = defaultdict(int)
    for s in doc.get("skipped", []):
        size = "native" if s["input_size"] is None else s["input_size"]
        groups[(s["model"], s["implementation"], s["engine"], s["precision"], size, s["reason"])] += 1
    for (model, impl, engine, precision, size, reason), n in groups.items():
        who = engine if impl == "swiftsam" else "reference"
        out.append(f"skipped {n} cell{'s' * (n > 1)}: {model} {who} {precision} size {size}: {reason}")
    best = doc.get("best_vs_best", [])
    if best:
        out.append("")
        out.append("best vs best (swiftsam's fastest engine and precision / the reference's fastest precision):")
        for b in best:
            n = f" n{b['prompts']}" if b["stage"] == "decoder" else f" bs{b['batch_size']}"
            out.append(f"  {b['model']} {b['input_size']} {b['stage']}{n}: {b['swiftsam_engine']} {b['swiftsam_precision']} "
                       f"{b['swiftsam_median_s'] * 1e3:,.1f} ms vs reference {b['reference_precision']} "
                       f"{b['reference_median_s'] * 1e3:,.1f} ms = {b['speedup']:.2f}x")
    return "\n".join(out)


PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _log_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo <= v <= hi:
                ticks.append(v)
    return ticks


def chart(doc: dict, path: str | os.PathLike[str], stage: str = "pipeline", panel: tuple[int, int] = (520, 380)) -> int:
    """Draw latency (ms, x, log) against throughput (y, log) per model: one panel per model, one line
    per implementation / engine / precision through its batch sizes. Returns the number of panels."""
    series: dict[str, dict[str, list[tuple[float, float, int]]]] = defaultdict(lambda: defaultdict(list))
    unit = "img/s"
    sizes: dict[str, set[int]] = defaultdict(set)
    for r in doc["results"]:
        sizes[r["model"]].add(r["input_size"])
    for r in doc["results"]:
        if r["stage"] != stage:
            continue
        name = (r["engine"] if r["implementation"] == "swiftsam" else "reference") + f" {r['precision']}"
        if len(sizes[r["model"]]) > 1:
            name += f" @{r['input_size']}"
        x = r["median_s"] * 1e3
        series[r["model"]][name].append((x, r["throughput"], r["batch_size"] if stage != "decoder" else r["prompts"]))
        unit = r["throughput_unit"]
    if not series:
        raise ValueError(f"no {stage} results to chart")
    names = sorted({name for lines in series.values() for name in lines})
    color_of = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}  # one colour per line, all panels
    cols = min(2, len(series))
    rows = math.ceil(len(series) / cols)
    pw, ph = panel
    img = Image.new("RGB", (pw * cols, ph * rows), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    for k, (model, lines) in enumerate(series.items()):
        ox, oy = (k % cols) * pw, (k // cols) * ph
        left, top, right, bottom = ox + 70, oy + 30, ox + pw - 150, oy + ph - 45
        xs = [p[0] for pts in lines.values() for p in pts]
        ys = [p[1] for pts in lines.values() for p in pts]
        xlo, xhi = min(xs) / 1.5, max(xs) * 1.5
        ylo, yhi = min(ys) / 1.5, max(ys) * 1.5

        def to_px(x, y, xlo=xlo, xhi=xhi, ylo=ylo, yhi=yhi, left=left, right=right, top=top, bottom=bottom):
            fx = (math.log10(x) - math.log10(xlo)) / (math.log10(xhi) - math.log10(xlo))
            fy = (math.log10(y) - math.log10(ylo)) / (math.log10(yhi) - math.log10(ylo))
            return left + fx * (right - left), bottom - fy * (bottom - top)

        draw.text((left, oy + 8), f"{model} - {stage}", fill="black", font=font)
        draw.rectangle([left, top, right, bottom], outline="black")
        for t in _log_ticks(xlo, xhi):
            px, _ = to_px(t, ylo)
            draw.line([px, bottom, px, bottom + 4], fill="black")
            draw.text((px - 10, bottom + 6), f"{t:g}", fill="black", font=font)
        for t in _log_ticks(ylo, yhi):
            _, py = to_px(xlo, t)
            draw.line([left - 4, py, left, py], fill="black")
            draw.text((ox + 5, py - 6), f"{t:g}", fill="black", font=font)
        draw.text(((left + right) / 2 - 40, bottom + 22), "latency (ms)", fill="black", font=font)
        draw.text((ox + 5, top - 14), f"throughput ({unit})", fill="black", font=font)
        for i, (name, pts) in enumerate(sorted(lines.items())):
            color = color_of[name]
            pts = sorted(pts, key=lambda p: p[2])
            pix = [to_px(x, y) for x, y, _ in pts]
            if len(pix) > 1:
                draw.line(pix, fill=color, width=2)
            for (px, py), (_, _, b) in zip(pix, pts):
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
                draw.text((px + 4, py - 12), str(b), fill=color, font=font)
            draw.text((right + 10, top + 14 * i), name, fill=color, font=font)
        draw.text((right + 10, top + 14 * len(lines) + 6), "labels: batch" if stage != "decoder" else "labels: prompts",
                  fill="gray", font=font)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return len(series)


def markdown(doc: dict) -> str:
    """One markdown table per stage: rows are models (and prompt counts / batch sizes), columns the
    implementations; each swiftsam cell shows milliseconds and its speed-up over the reference in the same
    precision (fp32 vs fp32, bf16 vs bf16; int8 against the reference in fp32, which has no int8). Then the
    best-vs-best table."""
    cols: list[tuple[str, str, str]] = []
    for r in doc["results"]:
        c = (r["implementation"], r["engine"], r["precision"])
        if c not in cols:
            cols.append(c)
    cols.sort(key=lambda c: (c[0] != "reference", c[1], c[2]))
    index = {(r["model"], r["input_size"], r["stage"], r["batch_size"], r["prompts"],
              r["implementation"], r["engine"], r["precision"]): r for r in doc["results"]}
    out = []
    for stage in ("encoder", "decoder", "pipeline"):
        keys = sorted({(r["model"], r["input_size"], r["batch_size"], r["prompts"]) for r in doc["results"]
                       if r["stage"] == stage}, key=lambda k: ([r["model"] for r in doc["results"]].index(k[0]),) + k[1:])
        if not keys:
            continue
        what = {"encoder": "batch", "decoder": "prompts", "pipeline": "batch"}[stage]
        head = ["model", "input", what] + [("reference" if i == "reference" else e) + f" {p}" for i, e, p in cols]
        out += [f"### {stage} (median ms; x = speed-up over the reference in the same precision, int8 over fp32)", "",
                "| " + " | ".join(head) + " |", "| " + " | ".join(["---"] * 3 + ["---:"] * len(cols)) + " |"]
        for model, size, batch, prompts in keys:
            cells = []
            for impl, engine, precision in cols:
                r = index.get((model, size, stage, batch, prompts, impl, engine, precision))
                ref = index.get((model, size, stage, batch, prompts, "reference", "eager",
                                 "fp32" if precision == "int8" else precision))
                if r is None:
                    cells.append("-")
                elif impl == "swiftsam" and ref is not None:
                    cells.append(f"{r['median_s'] * 1e3:,.1f} ({ref['median_s'] / r['median_s']:.2f}x)")
                else:
                    cells.append(f"{r['median_s'] * 1e3:,.1f}")
            n = prompts if stage == "decoder" else batch
            out.append("| " + " | ".join([model, str(size), str(n)] + cells) + " |")
        out.append("")
    best = doc.get("best_vs_best", [])
    if best:
        out += ["### best vs best (swiftsam's fastest engine and precision / the reference's fastest precision)", "",
                "| model | input | stage | batch / prompts | swiftsam | ms | reference | ms | speed-up |",
                "| --- | --- | --- | --- | --- | ---: | --- | ---: | ---: |"]
        for b in best:
            n = b["prompts"] if b["stage"] == "decoder" else b["batch_size"]
            out.append(f"| {b['model']} | {b['input_size']} | {b['stage']} | {n} | {b['swiftsam_engine']} "
                       f"{b['swiftsam_precision']} | {b['swiftsam_median_s'] * 1e3:,.1f} | {b['reference_precision']} | "
                       f"{b['reference_median_s'] * 1e3:,.1f} | {b['speedup']:.2f}x |")
        out.append("")
    return "\n".join(out)

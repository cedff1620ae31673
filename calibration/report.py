"""Calibration report: per-tensor amax table (JSON + Markdown) and histogram plots.

Why: when an INT8 model loses accuracy, the first question is which tensors clip or waste
range. The table lists every quantized activation with its amax, max |x|, the method, and
the relative quantization error ``E[(x - q(x))²] / E[x²]`` estimated from its histogram
(rounding plus clipping at the chosen amax); the tensors with the largest error get a plot
of their |x| histogram with the chosen threshold marked — candidates for ``--exclude``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from deeplab_trt.calibration.histogram import AbsHistogram
from deeplab_trt.calibration.scales import QMAX, scale_from_amax
from deeplab_trt.runtime.atomic import atomic_path, write_text_atomic
from deeplab_trt.runtime.errors import ToolkitError, require

PLOTS = 8


def relative_error(hist: AbsHistogram, amax: float) -> float:
    """``E[(x - q(x))²] / E[x²]`` over the histogram (bin centres), for symmetric int8 at ``amax``."""
    counts, width = hist.trimmed()
    if not counts.sum() or width == 0.0 or amax <= 0:
        return 0.0
    x = (np.arange(counts.size) + 0.5) * width
    x[0] = 0.0 if hist.zeros >= counts[0] else x[0]
    scale = float(scale_from_amax(amax))
    q = np.minimum(np.rint(x / scale), QMAX) * scale
    power = float(np.sum(counts * x**2))
    return float(np.sum(counts * (x - q) ** 2) / power) if power > 0 else 0.0


def _rows(result) -> list[dict]:
    consumers = result.plan.activations
    rows = []
    for name, amax in result.amax.items():
        h = result.histograms.get(name)
        row = {
            "tensor": name,
            "amax": float(amax),
            "scale": float(scale_from_amax(amax)),
            "method": result.method,
            "consumers": [n for n, _ in consumers.get(name, [])],
        }
        if h is not None:
            row.update(
                max_abs=float(h.amax),
                min=float(h.min),
                max=float(h.max),
                clipped_fraction=float(_clipped(h, amax)),
                zero_fraction=float(h.zeros / h.count) if h.count else 0.0,
                rel_error=relative_error(h, amax),
            )
        rows.append(row)
    return rows


def _clipped(h: AbsHistogram, amax: float) -> float:
    counts, width = h.trimmed()
    if not counts.sum() or width == 0.0:
        return 0.0
    first = int(np.ceil(amax / width))
    return float(counts[first:].sum() / counts.sum()) if first < counts.size else 0.0


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_")[:80] or "tensor"


def pyplot(*, purpose: str = "--report (calibration histogram PNGs)"):
    """``matplotlib.pyplot`` on the file-only Agg backend, or NotInstalledError naming the ``plots`` extra.

    The one matplotlib import (the benchmark plot uses it too). Commands call it before their long
    work, so a missing extra fails in seconds, not after the run.

    Args:
        purpose: what needs the plot, for the one-line error.
    """
    matplotlib = require("matplotlib", extra="plots", purpose=purpose)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot(path: Path, name: str, h: AbsHistogram, amax: float, method: str, err: float) -> None:
    plt = pyplot()

    counts, width = h.trimmed()
    edges = np.arange(counts.size + 1) * width
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=100)
    try:
        ax.stairs(np.maximum(counts, 0.5), edges, fill=True, color="#4C72B0", alpha=0.85, baseline=0.5)
        ax.set_yscale("log")
        ax.axvline(amax, color="#C44E52", lw=1.5, label=f"{method} amax {amax:.4g}")
        ax.axvline(h.amax, color="0.4", lw=1, ls="--", label=f"max |x| {h.amax:.4g}")
        ax.set_xlabel("|x|")
        ax.set_ylabel("count")
        ax.set_title(f"{name[-70:]}\nrelative int8 error {err:.2e}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)


def write_report(report_dir: str | Path, result, title: str = "", plots: int = PLOTS, census=None) -> Path:
    """``calibration.json``, ``calibration.md`` and ``hist_*.png`` in ``report_dir``; returns the dir.

    ``census``: the written graph's :class:`~deeplab_trt.calibration.layer_census.Census` (layers per precision).
    """
    report_dir = Path(report_dir)
    if report_dir.exists() and not report_dir.is_dir():
        raise ToolkitError(f"{report_dir}: exists and is not a directory (--report needs a directory)")
    report_dir.mkdir(parents=True, exist_ok=True)
    rows = _rows(result)
    ranked = sorted((r for r in rows if "rel_error" in r), key=lambda r: -r["rel_error"])
    images = []
    for k, row in enumerate(ranked[:plots]):
        name = row["tensor"]
        png = report_dir / f"hist_{k:02d}_{_slug(name)}.png"
        _plot(png, name, result.histograms[name], row["amax"], result.method, row["rel_error"])
        row["plot"] = png.name
        images.append((name, png.name))
    doc = {
        "title": title,
        "method": result.method,
        "percentile": result.percentile,
        "source": result.source,
        "frames": result.frames,
        "seconds": round(result.seconds, 3),
        "quantized_tensors": len(rows),
        "quantized_weights": len(result.plan.weights),
        "residual_adds": result.plan.residual_adds,
        "float_convs": result.plan.float_convs,
        "quantized_pools": result.plan.quantized_pools,
        "layers": census.counts() if census is not None else None,
        "fp32_layers": census.fp32_layers if census is not None else None,
        "tensors": rows,
    }
    write_text_atomic(report_dir / "calibration.json", json.dumps(doc, indent=1) + "\n")

    md = [
        f"# INT8 calibration{': ' + title if title else ''}",
        "",
        f"- method: **{result.method}**" + (f" (percentile {result.percentile})" if result.percentile else ""),
        f"- source: {result.source}, {result.frames} frames, {result.seconds:.1f} s",
        f"- quantized activation tensors: {len(rows)}; Conv weights (per-channel): {len(result.plan.weights)}; "
        f"residual Adds: {len(result.plan.residual_adds)}; pools reading a quantized input: "
        f"{len(result.plan.quantized_pools)}",
        f"- kept float: {', '.join(result.plan.float_convs) or 'none'}",
        *([f"- layers ({census.source} types): {census.summary()}"] if census is not None else []),
        "",
    ]
    has_hist = bool(ranked)
    header = "| tensor | amax | max abs | clipped | zeros | rel. error |" if has_hist else "| tensor | amax | scale |"
    md += [header, "|---|---:|---:|---:|---:|---:|" if has_hist else "|---|---:|---:|"]
    for row in ranked if has_hist else rows:
        if has_hist:
            md.append(
                f"| `{row['tensor']}` | {row['amax']:.5g} | {row['max_abs']:.5g} | "
                f"{row['clipped_fraction']:.2e} | {row['zero_fraction']:.1%} | {row['rel_error']:.2e} |"
            )
        else:
            md.append(f"| `{row['tensor']}` | {row['amax']:.5g} | {row['scale']:.5g} |")
    if images:
        md += ["", f"## Largest quantization error ({len(images)} tensors)", ""]
        md += [f"![{name}]({png})" for name, png in images]
    write_text_atomic(report_dir / "calibration.md", "\n".join(md) + "\n")
    return report_dir

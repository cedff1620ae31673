"""Benchmark reports: console table, JSON, Markdown and a PNG, all from one result dict.

Why one dict: ``deeplab-trt bench`` measures once and every output format is a view of the
same numbers, so the README table, the JSON a CI job diffs and the plot cannot disagree.

JSON schema ``deeplab-trt-bench/1`` (keys marked * may be ``null`` when not measured)::

    {
      "schema": "deeplab-trt-bench/1",
      "created": "2026-11-24T12:00:00+00:00",          # UTC, ISO 8601
      "environment": {                                   # see deeplab_trt.benchmarks.environment.environment()
        "cpu": str, "cpu_cores": int, "platform": str, "python": str,
        "gpu"*: str, "gpu_memory_mb"*: float, "driver"*: str, "cuda"*: str,
        "tensorrt_flavour"*: "tensorrt"|"tensorrt-rtx", "tensorrt_version"*: str,
        "onnxruntime"*: str, "onnxruntime_providers": [str], "numpy": str, "opencv": str, "onnx"*: str
      },
      "config": {
        "model": str, "model_sha256": str, "backend": str, "precisions": [str],
        "iterations": int, "warmup": int, "batch": int, "input_size": [H, W],
        "head": str, "num_classes": int, "video"*: str, "data": [str],
        "calibration_frames": int, "fidelity_frames": int, "fidelity_source": str,
        "e2e_frames": int, "cache_dir": str,
        "streams"*: int, "stream_repeats": int          # bench --streams N
      },
      "results": {
        "<precision>": {                                 # fp32, fp16, int8 (those asked for)
          "model": str,                                  # the graph / engine that ran
          "cached": bool,                                # reused from the cache dir
          "prepare_s": float,                            # build / convert / calibrate time (0 if cached)
          "latency_ms": {"mean","std","min","p50","p90","p99","max"},   # inference only, per batch
          "latency_source": "cuda-events"|"wall-clock",
          "e2e_latency_ms"*: {same keys},                # host frame in -> host overlay out, per frame
          "throughput_fps"*: float,                      # frames/s through the pipelined loop
          "stage_ms"*: {"<stage>": float},               # mean per-frame time of each pipeline stage
          "peak_memory_mb": float,                       # peak process RSS while this precision ran
          "peak_gpu_memory_mb"*: float,                  # peak device memory in use (GPU runs)
          "agreement"*: float,                           # pixel agreement with fp32 labels, 0..1
          "miou_vs_fp32"*: float,                        # mIoU of labels against fp32 labels
          "miou_vs_gt"*: float,                          # mIoU against ground truth labels
          "streams"*: {                                  # bench --streams N (stream_throughput.measure)
            "streams": N, "frames_per_stream": int,
            "batched"|"sequential": {
              "fps": [float], "fps_spread": {"median","min","max"},   # aggregate FPS per repeat
              "frames": [int], "mean_batch": float,                    # frames per repeat, frames / inferences
              "latency_ms": {"p50","p99","max"},                      # per frame, all streams and repeats
              "per_stream_latency_ms": [{"p50","p99","max"}]
            },
            "ratio": [float], "ratio_spread": {"median","min","max"},  # batched / sequential FPS per repeat
            "inference"*: {"batch_1_ms", "batch_n_ms", "speedup"}       # backend.infer only: N x t1 / tN
          }
        }
      }
    }

For ``fp32`` itself ``agreement`` and ``miou_vs_fp32`` are 1.0 by definition.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from deeplab_trt.calibration.report import pyplot
from deeplab_trt.runtime.atomic import atomic_path

SCHEMA = "deeplab-trt-bench/1"
STAT_KEYS = ("mean", "std", "min", "p50", "p90", "p99", "max")
RESULT_KEYS = (
    "latency_ms",
    "e2e_latency_ms",
    "throughput_fps",
    "peak_memory_mb",
    "agreement",
    "miou_vs_fp32",
    "miou_vs_gt",
)


def _fmt(value: Any, spec: str = ".2f", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def _pct(value: Any) -> str:
    return _fmt(None if value is None else 100.0 * value, ".2f") + ("%" if value is not None else "")


def _layers(layers: dict | None) -> str:
    return "-" if not layers else f"{layers['int8']}/{layers['fp16']}/{layers['fp32']}"


def _rows(report: dict) -> list[list[str]]:
    rows = []
    for precision, r in report["results"].items():
        lat = r.get("latency_ms") or {}
        e2e = r.get("e2e_latency_ms") or {}
        rows.append(
            [
                precision,
                _fmt(lat.get("mean")),
                _fmt(lat.get("p50")),
                _fmt(lat.get("p99")),
                _fmt(e2e.get("p50")),
                _fmt(e2e.get("p99")),
                _fmt(r.get("throughput_fps"), ".1f"),
                _fmt(r.get("peak_memory_mb"), ".0f")
                + (f" / {r['peak_gpu_memory_mb']:.0f}" if r.get("peak_gpu_memory_mb") is not None else ""),
                _pct(r.get("agreement")),
                _fmt(r.get("miou_vs_fp32"), ".4f"),
                _fmt(r.get("miou_vs_gt"), ".4f"),
                _layers(r.get("layers")),
            ]
        )
    return rows


def _headers(report: dict) -> list[str]:
    batch = report.get("config", {}).get("batch", 1)
    mem = (
        "peak MB (RSS / GPU)"
        if any(r.get("peak_gpu_memory_mb") is not None for r in report["results"].values())
        else "peak RSS MB"
    )
    per = f"/batch{batch}" if batch != 1 else ""
    return [
        "precision",
        f"infer mean ms{per}",
        "infer p50",
        "infer p99",
        "e2e p50 ms",
        "e2e p99",
        "FPS",
        mem,
        "agreement",
        "mIoU vs fp32",
        "mIoU vs GT",
        "layers INT8/FP16/FP32",
    ]


def format_table(report: dict) -> str:
    """Plain-text table for the console (fixed-width columns)."""
    headers, rows = _headers(report), _rows(report)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(row) for row in rows]
    env, cfg = report.get("environment", {}), report.get("config", {})
    device = env.get("gpu") or f"{env.get('cpu', '?')} ({env.get('cpu_cores', '?')} cores)"
    size = "x".join(map(str, cfg.get("input_size") or [])) or "?"
    out.append(
        f"backend {cfg.get('backend')} on {device}; {cfg.get('iterations')} iterations after "
        f"{cfg.get('warmup')} warmup; input {size}; fidelity on {cfg.get('fidelity_frames')} frames "
        f"({cfg.get('fidelity_source')}; ground truth {str(cfg.get('ground_truth', '?')).split(':')[0]})"
    )
    out.append(ratio_line(report))
    out += stream_lines(report)
    return "\n".join(out)


def stream_rows(report: dict) -> list[tuple[str, dict]]:
    """``(precision, entry)`` for each precision of a ``bench --streams N`` report that measured N streams."""
    return [(p, r["streams"]) for p, r in report["results"].items() if r.get("streams")]


def stream_lines(report: dict) -> list[str]:
    """The ``--streams N`` table of a bench report (nothing without ``--streams``)."""
    rows = stream_rows(report)
    if not rows:
        return []
    n, frames = rows[0][1]["streams"], rows[0][1]["frames_per_stream"]
    repeats = len(rows[0][1]["ratio"])
    return [
        "",
        f"{n} streams, {frames} frames each: one batched process vs {n} sequential runs ({repeats} interleaved repeats)",
        *stream_table(rows, "precision"),
    ]


def ratio_line(report: dict) -> str:
    """INT8/FP16 mean latency (issue goal <= 0.62 on TensorRT), or why it is not there."""
    ratio = report.get("int8_over_fp16")
    if ratio is None:
        return "INT8/FP16 latency ratio: unmeasured (needs both int8 and fp16 in one run)"
    return f"INT8/FP16 latency ratio: {ratio:.3f} (backend {report.get('config', {}).get('backend')})"


def format_markdown(report: dict) -> str:
    """Markdown: environment, configuration, and the results table (README-ready)."""
    env, cfg = report.get("environment", {}), report.get("config", {})
    lines = [f"# deeplab-trt benchmark: {Path(str(cfg.get('model', '?'))).name}", ""]
    lines.append(f"Created {report.get('created', '?')} with `{cfg.get('command', 'deeplab-trt bench')}`.")
    lines.append("")
    lines.append("## Environment")
    lines.append("")
    for key, value in env.items():
        if value not in (None, "", []):
            lines.append(f"- **{key}**: {', '.join(map(str, value)) if isinstance(value, list) else value}")
    lines.append("")
    lines.append("## Configuration")
    lines.append("")
    for key in (
        "backend",
        "tensorrt_flavour",
        "precisions",
        "input_size",
        "head",
        "num_classes",
        "batch",
        "streams",
        "iterations",
        "warmup",
        "e2e_frames",
        "fidelity_frames",
        "fidelity_source",
        "ground_truth",
        "calibration_frames",
        "calibration_method",
        "video",
        "data",
    ):
        if cfg.get(key) not in (None, "", [], 0):
            value = cfg[key]
            if key == "input_size":
                value = "x".join(map(str, value))
            lines.append(f"- **{key}**: {', '.join(map(str, value)) if isinstance(value, list) else value}")
    lines.append("")
    lines.append("## Results")
    lines.append("")
    headers, rows = _headers(report), _rows(report)
    lines.append("| " + " | ".join(headers) + " |")
    lines.append("|" + "|".join([":--"] + ["--:"] * (len(headers) - 1)) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines.append("")
    lines.append(
        "Latency in milliseconds: `infer` = model inference only ("
        + ", ".join(sorted({r.get("latency_source", "?") for r in report["results"].values()}))
        + "); `e2e` = host frame in to host overlay out through the pipeline, per frame. "
        "FPS = frames per second through the pipelined loop. Agreement and mIoU vs fp32 "
        "compare label maps with the fp32 model's on the same frames."
    )
    lines.append("")
    if stream_rows(report):
        lines += [*stream_lines(report)[1:], ""]
    return "\n".join(lines)


def write_json(report: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2, sort_keys=False, default=str) + "\n")
    return path


def write_markdown(report: dict, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(format_markdown(report))
    return path


#: For the one-line error when matplotlib (the ``plots`` extra) is missing.
PLOT_PURPOSE = "--plot (the benchmark PNG)"


def write_plot(report: dict, path: str | Path) -> Path:
    """PNG: latency per precision (bar = p50, whisker up to p99; inference and end-to-end) and,
    beside it, fidelity against fp32 (agreement, mIoU vs fp32, mIoU vs GT)."""
    plt = pyplot(purpose=PLOT_PURPOSE)

    results = report["results"]
    names = list(results)
    xs = list(range(len(names)))
    streams = stream_rows(report)
    if streams:  # a second row: batched vs sequential streams per precision
        fig, ((ax_lat, ax_fid), (ax_fps, ax_slat)) = plt.subplots(2, 2, figsize=(11, 8.4))
        draw_streams(ax_fps, ax_slat, streams, f"precision ({report.get('config', {}).get('streams')} streams)")
    else:
        fig, (ax_lat, ax_fid) = plt.subplots(1, 2, figsize=(11, 4.2))

    series = [("latency_ms", "inference"), ("e2e_latency_ms", "end-to-end")]
    present = [(k, label) for k, label in series if any(results[n].get(k) for n in names)]
    width = 0.8 / max(1, len(present))
    for j, (key, label) in enumerate(present):
        p50 = [(results[n].get(key) or {}).get("p50") or 0.0 for n in names]
        p99 = [(results[n].get(key) or {}).get("p99") or 0.0 for n in names]
        pos = [x + (j - (len(present) - 1) / 2) * width for x in xs]
        ax_lat.bar(
            pos,
            p50,
            width,
            label=f"{label} p50",
            yerr=[[0.0] * len(names), [max(0.0, b - a) for a, b in zip(p50, p99)]],
            capsize=4,
        )
    ax_lat.set_xticks(xs, names)
    ax_lat.set_ylabel("milliseconds (bar p50, whisker p99)")
    ax_lat.set_title("Latency per precision")
    ax_lat.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2, frameon=False)

    fid = [("agreement", "pixel agreement"), ("miou_vs_fp32", "mIoU vs fp32"), ("miou_vs_gt", "mIoU vs GT")]
    fid = [(k, label) for k, label in fid if any(results[n].get(k) is not None for n in names)]
    width = 0.8 / max(1, len(fid))
    lows = []
    for j, (key, label) in enumerate(fid):
        vals = [results[n].get(key) for n in names]
        lows += [v for v in vals if v is not None]
        pos = [x + (j - (len(fid) - 1) / 2) * width for x in xs]
        bars = ax_fid.bar(pos, [v if v is not None else 0.0 for v in vals], width, label=label)
        ax_fid.bar_label(bars, labels=["" if v is None else f"{v:.3f}" for v in vals], fontsize=7, padding=1)
    ax_fid.set_xticks(xs, names)
    ax_fid.set_ylim(max(0.0, min(lows, default=0.0) - 0.05) if lows else 0.0, 1.01)
    ax_fid.set_title("Fidelity")
    if fid:  # below the axes: inside, it would hide a bar whatever the corner
        ax_fid.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(fid), frameon=False)

    env, cfg = report.get("environment", {}), report.get("config", {})
    device = env.get("gpu") or env.get("cpu", "")
    fig.suptitle(f"{Path(str(cfg.get('model', ''))).name} - {cfg.get('backend')} on {device}", fontsize=10)
    fig.tight_layout()
    return _save(fig, plt, path)


# ----------------------------------------------------------------------------- several streams
STREAM_HEADERS = (
    "batched FPS",
    "sequential FPS",
    "batched / sequential (min-max)",
    "mean batch",
    "batched latency p50 / p99 ms",
    "sequential latency p50 / p99 ms",
    "infer-only speedup",
)


def _latency(side: dict) -> str:
    lat = side.get("latency_ms") or {}
    return f"{_fmt(lat.get('p50'), '.0f')} / {_fmt(lat.get('p99'), '.0f')}"


def stream_row(entry: dict) -> list[str]:
    """The cells of one N-streams measurement (:func:`deeplab_trt.benchmarks.stream_throughput.measure`)."""
    b, s, ratio = entry["batched"], entry["sequential"], entry["ratio_spread"]
    inference = entry.get("inference") or {}
    return [
        _fmt(b["fps_spread"]["median"], ".1f"),
        _fmt(s["fps_spread"]["median"], ".1f"),
        f"{ratio['median']:.3f} ({ratio['min']:.3f}-{ratio['max']:.3f})",
        _fmt(b["mean_batch"], ".2f"),
        _latency(b),
        _latency(s),
        _fmt(inference.get("speedup"), ".2f") + ("x" if inference.get("speedup") is not None else ""),
    ]


def stream_table(rows: list[tuple[str, dict]], first: str) -> list[str]:
    """Markdown table lines of N-streams measurements, one row per ``(label, entry)`` (``first``: the label column).

    FPS are medians over the repeats (aggregate: all streams' frames / wall time); the ratio is
    taken within each repeat; latency is per frame, pooled over the streams and repeats.
    """
    headers = [first, *STREAM_HEADERS]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join([":--"] + ["--:"] * len(STREAM_HEADERS)) + "|"]
    return lines + ["| " + " | ".join([label, *stream_row(entry)]) + " |" for label, entry in rows]


def draw_streams(ax_fps, ax_lat, rows: list[tuple[str, dict]], xlabel: str) -> None:
    """Two panels for N-streams measurements: aggregate FPS (median, whiskers min-max) and latency (p50, whisker p99)."""
    labels = [f"{label}\n{entry['ratio_spread']['median']:.2f}x" for label, entry in rows]  # the ratio under each
    xs = list(range(len(rows)))
    width = 0.4
    for j, side in enumerate(("batched", "sequential")):
        pos = [x + (j - 0.5) * width for x in xs]
        spreads = [entry[side]["fps_spread"] for _, entry in rows]
        med = [sp["median"] for sp in spreads]
        ax_fps.bar(
            pos,
            med,
            width,
            label=side,
            yerr=[[m - sp["min"] for m, sp in zip(med, spreads)], [sp["max"] - m for m, sp in zip(med, spreads)]],
            capsize=3,
        )
        p50 = [(entry[side]["latency_ms"] or {}).get("p50") or 0.0 for _, entry in rows]
        p99 = [(entry[side]["latency_ms"] or {}).get("p99") or 0.0 for _, entry in rows]
        ax_lat.bar(
            pos,
            p50,
            width,
            label=side,
            yerr=[[0.0] * len(rows), [max(0.0, b - a) for a, b in zip(p50, p99)]],
            capsize=3,
        )
    for ax, title, ylabel in (
        (ax_fps, "Aggregate throughput", "frames/s, all streams (median, whiskers min-max)"),
        (ax_lat, "Per-stream latency", "ms per frame (bar p50, whisker p99)"),
    ):
        ax.set_xticks(xs, labels)
        ax.set_xlabel(f"{xlabel}; batched / sequential FPS", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title)
        ax.legend(fontsize=8)


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_stream_plot(result: dict, path: str | Path) -> Path:
    """PNG of a stream-throughput sweep (``python -m deeplab_trt.benchmarks.stream_throughput --plot``)."""
    plt = pyplot(purpose="stream_throughput --plot")
    fig, (ax_fps, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    draw_streams(ax_fps, ax_lat, [(str(e["streams"]), e) for e in result["results"]], "streams (N)")
    cfg, env = result.get("config", {}), result.get("environment", {})
    fig.suptitle(
        f"N streams batched in one process vs N sequential runs\n{Path(str(cfg.get('model', ''))).name} - "
        f"{cfg.get('backend')} on {env.get('gpu') or env.get('cpu', '')}",
        fontsize=9,
    )
    fig.tight_layout()
    return _save(fig, plt, path)

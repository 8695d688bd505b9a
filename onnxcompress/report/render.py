"""Turn a Report into text for the terminal. Computes nothing; the only module that formats."""

from __future__ import annotations

from .. import metrics as M
from .stats import Report


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{round(x, 2) + 0.0:.2f}"  # + 0.0: no "-0.00"


def render(report: Report) -> str:
    lines = [f"model:  {report.model}", f"output: {report.output}", ""]
    header = ("layer", "op", "shape", "params", "MFLOPs", "sparsity", "bits", "before", "after",
              "stored as")
    rows = [(r.layer, r.op, "x".join(map(str, r.shape)), f"{r.params:,}",
             "-" if r.flops is None else f"{r.flops / 1e6:.2f}", f"{r.sparsity:.1%}",
             "-" if r.bits is None else str(r.bits), _size(r.bytes_before), _size(r.bytes_after),
             r.stored_as) for r in report.layers]
    if rows:
        lines += _table(header, rows) + [""]
    classes = report.metric in ("top1", "agreement")
    extra = not classes and report.metric is not None
    srows = [(s.stage, _size(s.bytes), f"{s.ratio:.1f}x",
              *([_pct(s.score)] if extra else []),
              *([_pct(s.accuracy), _pct(s.agreement)] if classes or report.metric is None else []),
              "-" if s.max_abs_diff is None else f"{s.max_abs_diff:.3g}",
              "-" if s.mean_abs_diff is None else f"{s.mean_abs_diff:.3g}",
              "-" if s.stage not in report.latency_ms else f"{report.latency_ms[s.stage]:.3f}")
             for s in report.stages]
    score_cols = ((M.LABELS[M.Metric(report.metric)],) if extra else ()) + (
        ("top-1 %", "agree %") if classes or report.metric is None else ())
    header = ("stage", "size", "ratio", *score_cols, "max |d|", "mean |d|", "latency ms")
    if report.exits:  # a model with early exits: what a sample costs on average
        header += ("MFLOPs", "batch-64/s")
        srows = [r + ("-" if s.flops is None else f"{s.flops / 1e6:.2f}",
                      "-" if s.stage not in report.throughput
                      else f"{report.throughput[s.stage]:.0f}")
                 for r, s in zip(srows, report.stages)]
    lines += _table(header, srows)
    if report.scored_output is not None:
        lines += [(f"scored: output '{report.scored_output}' by {report.metric} "
                  f"({report.units})")]
    lines += _exits(report)
    if report.container and report.container["n_symbols"]:  # no line when nothing is entropy-coded
        c = report.container
        lines += ["", (f"entropy coding (Huffman/rANS): {c['n_symbols']:,} symbols at "
                       f"{c['bits_per_symbol']:.3f} bits each; entropy bound "
                       f"{c['entropy_bits_per_symbol']:.3f} ({c['over_entropy']:+.1%})")]
    if report.unknown_ops:
        lines += ["", "left untouched (no pass knows these ops): " + ", ".join(report.unknown_ops)]
    lines += [f"note: {n}" for n in report.notes]
    if report.budget_unmet:
        lines += ["", (f"{', '.join(report.budget_unmet)}: no setting meets the accuracy budget; "
                       "the model was left unchanged by it")]
    if report.budget is not None and report.accuracy_drop is not None:
        verdict = "within" if report.within_budget else "EXCEEDS"
        lines += ["", (f"{report.metric} drop {report.accuracy_drop:.2f} {report.units}: "
                       f"{verdict} the budget of {report.budget:.2f} (used "
                       f"{_used(report.accuracy_drop, report.budget)})")]
    return "\n".join(lines)


def _used(drop: float, budget: float) -> str:
    return f"{100 * max(drop, 0.0) / budget:.0f}%" if budget > 0 else "-"


def _exits(report: Report) -> list[str]:
    """The exit table of a model with early exits: planned (held-out calibration data) and
    measured (evaluation data) shares, their accuracy, and what a sample leaving there costs."""
    if not report.exits:
        return []
    rel = {"entropy": "entropy <=", "max-prob": "max-prob >=", "margin": "margin >="}.get(
        report.exit_criterion or "", "score >=")
    rows = [(e.exit, e.node or "(original output)", f"{100 * e.cost_fraction:.1f}",
             "-" if e.threshold is None else f"{rel} {e.threshold:.4g}",
             "-" if e.held_share is None else f"{100 * e.held_share:.1f}",
             "-" if e.share is None else f"{100 * e.share:.1f}", _pct(e.accuracy),
             f"{e.flops / 1e6:.2f}") for e in report.exits]
    lines = ["", "early exits (latency: mean over samples at batch 1)"]
    lines += _table(("exit", "after", "cost %", "leaves when", "planned %", "measured %",
                     "top-1 %", "MFLOPs"), rows)
    return lines


def _table(header: tuple, rows: list[tuple]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: "  ".join(
        str(x).ljust(w) if i == 0 or i == len(r) - 1 and not str(x)[:1].isdigit() else str(x).rjust(w)
        for i, (x, w) in enumerate(zip(r, widths)))
    return [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]

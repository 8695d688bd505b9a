"""The early-exit contract between the early_exit pass and whoever reads its models.

A model with early exits (passes/early_exit.py) is plain ONNX with one more graph output, an
int64 vector named EXIT_OUTPUT (or EXIT_OUTPUT_<n> if the model already had that name) that
gives, per sample, the exit it left by: 0 … E-1 for the exits in graph order, E for the
original output. Its graph doc string carries a line that starts with DOC_MARKER and holds the
exit table as JSON (`ExitTable`), so that `onnxcompress report` can show exit statistics
without the calibration data. Both sides import this module; it imports nothing of the project.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

EXIT_OUTPUT = "exit_index"
DOC_MARKER = "onnxcompress.early_exit: "
CRITERIA = ("entropy", "max-prob", "margin")


@dataclass(frozen=True)
class ExitEntry:
    """One exit: where it branches, what it costs, when it fires."""

    node: str  # the node whose output the exit reads (the cut)
    tensor: str  # that output
    flops: float  # FLOPs per sample of a sample leaving here (backbone so far + heads so far)
    cost_fraction: float  # backbone FLOPs before the cut / the original model's FLOPs
    threshold: float  # entropy <= t, max-prob >= t, margin >= t
    head: str  # "pool 4x4 + linear 512->10" …
    share: float  # share of held-out calibration inputs leaving here
    accuracy: float | None  # their top-1 (labels) or agreement with the original, %


@dataclass(frozen=True)
class ExitTable:
    criterion: str
    output: str  # the exit-index output's name
    model_flops: float  # FLOPs per sample of the original model
    final_flops: float  # FLOPs of a sample that goes to the end (backbone + every head)
    exits: list[ExitEntry] = field(default_factory=list)

    def path_flops(self) -> list[float]:
        """FLOPs per sample for each exit index (0 … E-1, then E = the end)."""
        return [e.flops for e in self.exits] + [self.final_flops]

    def to_doc(self) -> str:
        return DOC_MARKER + json.dumps(asdict(self), separators=(",", ":"))

    @staticmethod
    def from_doc(doc: str | None) -> ExitTable | None:
        """The table in a graph doc string, or None when it has none (or a broken one)."""
        for line in (doc or "").splitlines():
            if line.startswith(DOC_MARKER):
                try:
                    raw = json.loads(line[len(DOC_MARKER):])
                    exits = [ExitEntry(**e) for e in raw.pop("exits")]
                    return ExitTable(**raw, exits=exits)
                except (ValueError, TypeError, KeyError):
                    return None
        return None


def with_table(doc: str | None, table: ExitTable) -> str:
    """`doc` with its exit-table line replaced by (or extended with) `table`'s."""
    kept = [line for line in (doc or "").splitlines() if not line.startswith(DOC_MARKER)]
    return "\n".join([*kept, table.to_doc()])

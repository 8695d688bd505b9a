"""The calibration-statistics service and the graph runner under it (see service.py)."""

from .runner import GraphSession, run_graph
from .service import Calibration, Scorer, Snapshot

__all__ = ["Calibration", "GraphSession", "Scorer", "Snapshot", "run_graph"]

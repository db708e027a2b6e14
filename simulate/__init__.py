"""``kvspec simulate``: what each policy costs on a workload, side by side.

Runs the reference executor (the V2 scheduler pass, delay batching, attention-DP balance,
``can_queue``, the policy's reverts, suspend/resume, the host tier) over a stream of arriving
requests once per policy, with the managers' own checks on, and measures idle pages, free
pages, admission, preemptions and time to first token. Plots need matplotlib (``pip install
kvspec[plot]``), imported only by :mod:`kvspec.simulate.plots`. docs/simulate.md.
"""

from .metrics import CostModel, IterationMetrics, PolicySummary, RequestMetrics, Stop
from .runner import (
                     AccountingError,
                     PolicyRun,
                     SimulationOptions,
                     SimulationResult,
                     Workload,
                     simulate,
)
from .workload import PRESETS as WORKLOADS
from .workload import Arrival, WorkloadSpec, get_workload, read_trace

__all__ = ["WORKLOADS", "AccountingError", "Arrival", "CostModel", "IterationMetrics",
           "PolicyRun", "PolicySummary", "RequestMetrics", "SimulationOptions",
           "SimulationResult", "Stop", "Workload", "WorkloadSpec", "get_workload", "read_trace",
           "simulate"]

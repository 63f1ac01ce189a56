"""ablate: declare an ablation study in one file; train every seeded cell; report effects."""

import os

__version__ = "0.1.0"

# Before torch loads: OpenMP threads that spin-wait for a core another process holds made a run
# 4-6x slower with one of 2 cores busy (benchmarks/busy_cpu.py measures both policies).
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

from .study import AblateError, Cell, Claim, Key, Study  # noqa: E402

__all__ = ["AblateError", "Cell", "Claim", "Key", "Study", "__version__"]

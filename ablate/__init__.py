"""ablate: declare an ablation study in one file; train every seeded cell; report effects."""

import os

__version__ = "0.1.0"

# cuBLAS reads this once, at the process's first GEMM on a GPU, so a deterministic run set up
# later (engine.configure) would be too late for a notebook or a test that already multiplied;
# a user's own value stays. ":4096:8" is cuBLAS's deterministic workspace.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from .errors import AblateError
from .keys import Key
from .study import Cell, Claim, Study

__all__ = ["AblateError", "Cell", "Claim", "Key", "Results", "Study", "__version__", "load", "run"]


def __getattr__(name: str):
    """ablate.run, ablate.load and ablate.Results on first use: a study file's `from ablate
    import Study` does not load pandas' and seaborn's report stack."""
    if name in ("run", "load", "Results"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ablate' has no attribute {name!r}")

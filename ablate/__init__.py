"""ablate: declare an ablation study in one file; train every seeded cell; report effects."""

__version__ = "0.1.0"

from .study import AblateError, Cell, Claim, Key, Study  # noqa: E402

__all__ = ["AblateError", "Cell", "Claim", "Key", "Study", "__version__"]

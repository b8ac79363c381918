"""dynexit: explore early-exit image classifiers."""
from dynexit.table import ExitTable

__version__ = "0.1.0"
__all__ = ["ExitTable"]

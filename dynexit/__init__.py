"""dynexit: explore early-exit image classifiers."""
from dynexit.table import ExitTable

__version__ = "0.1.0"
__all__ = ["ExitTable", "attach_exits", "early_exit"]


def __getattr__(name):
    # torch is imported only when early exit or attach_exits is asked for: the numpy core loads without it
    if name == "early_exit":
        from dynexit.inference import early_exit
        return early_exit
    if name == "attach_exits":
        from dynexit.models.timm_exits import attach_exits
        return attach_exits
    raise AttributeError(f"module 'dynexit' has no attribute {name!r}")

"""dynexit: explore early-exit image classifiers."""
from dynexit.policy import ExitRule
from dynexit.table import ExitTable

__version__ = "0.1.0"
__all__ = ["ExitRule", "ExitTable", "attach_exits", "create_model", "early_exit", "list_models"]


def __getattr__(name):
    # torch is imported only when early exit or attach_exits is asked for: the numpy core loads without it
    if name == "early_exit":
        from dynexit.inference import early_exit
        return early_exit
    if name in ("create_model", "list_models"):
        from dynexit import models
        return getattr(models, name)
    if name == "attach_exits":
        from dynexit.models.timm_exits import attach_exits
        return attach_exits
    raise AttributeError(f"module 'dynexit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))  # the lazy names too

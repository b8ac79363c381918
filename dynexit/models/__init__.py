"""Multi-exit model families and their registry (timm style).

>>> from dynexit.models import create_model, list_models
>>> list_models("*fmnist*")
>>> model = create_model("dynperceiver_fmnist")
>>> fast = optimize_for_inference(model.eval())   # a new module for timing / serving (BN folded, channels-last)
"""

from __future__ import annotations

from dynexit.models._base import MultiExitModel, select_state
from dynexit.models._registry import create_model, is_model, list_models, register_model
from dynexit.models.optimize import optimize_for_inference

# import the families so their entrypoints register
from dynexit.models import multiexit_cnn  # noqa: F401
from dynexit.models import dynamic_perceiver  # noqa: F401
from dynexit.models import multiexit_vit  # noqa: F401
from dynexit.models import dynamic_vit  # noqa: F401
from dynexit.models import timm_exits  # noqa: F401

__all__ = ["MultiExitModel", "create_model", "list_models", "register_model", "is_model", "select_state",
           "optimize_for_inference"]

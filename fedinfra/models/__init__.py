"""The small torch models of the scenarios (layer L2). torch is imported lazily."""

from fedinfra.models.tabular import build_model, get_weights, set_weights

__all__ = ["build_model", "get_weights", "set_weights"]

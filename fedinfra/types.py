"""Shared type aliases (layer L0)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

#: A flat float32 parameter vector.
FloatVector = npt.NDArray[np.float32]
#: Named model parameters as numpy arrays (the wire form of a state dict).
NDArrays = dict[str, npt.NDArray[Any]]
#: JSON-compatible mapping.
JSONDict = dict[str, Any]

"""Data loading, partitioning and fingerprints (layer L2)."""

from fedinfra.data.bundled import SplitData, load_bundled
from fedinfra.data.fingerprint import fingerprint_arrays
from fedinfra.data.partition import dirichlet_partition

__all__ = ["SplitData", "dirichlet_partition", "fingerprint_arrays", "load_bundled"]

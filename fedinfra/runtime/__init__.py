"""Launching Flower (simulation, SuperLink, SuperNode) with hardened environments (L5)."""

from fedinfra.runtime.env import HARDENED_ENV, LOOPBACK, harden, hardened_env

__all__ = ["HARDENED_ENV", "LOOPBACK", "harden", "hardened_env"]

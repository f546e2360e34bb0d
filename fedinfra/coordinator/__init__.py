"""The coordinator (layer L4): the Flower ``ServerApp`` and its run loop.

Import :mod:`fedinfra.coordinator.app` for the ``ServerApp``; it pulls in Flower.
"""

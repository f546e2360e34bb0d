"""The site side (layer L4): the Flower ``ClientApp`` and what it runs each round.

Import :mod:`fedinfra.site.app` for the ``ClientApp``; it pulls in Flower and torch.
"""

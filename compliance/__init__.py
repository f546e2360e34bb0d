"""Compliance data shipped inside the wheel as ``fedinfra._compliance``.

Policy packs (``packs/*.toml``), dated reference data (``reference/``) and report
templates live here; code reads them with ``importlib.resources``.
"""

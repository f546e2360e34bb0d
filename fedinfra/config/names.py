"""Names that become paths: site names and run ids are slugs.

A site name or a run id ends up as a path component on the coordinator
(``runs/<run-id>/sites/<site>.json``) and at sites (``<state>/runs/<run-id>/``). Both
arrive from the other side of the wire, so a value such as ``a/../../../../outside/x``
or ``/etc/cron.d/x`` would write outside the directory meant for it (CWE-22, path
traversal). A slug is one path component by construction: letters, digits, ``.``, ``_``
and ``-``, starting with a letter or digit, at most 128 characters: never ``..``, never
absolute, never more than one component.
Checked where the value is received *and* where a path is built from it.
"""

from __future__ import annotations

import re

from fedinfra.errors import ConfigError

#: One path component: no separator, no leading dot, no "..", bounded length.
SLUG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_SLUG = re.compile(SLUG_PATTERN)


def is_slug(value: object) -> bool:
    """True if ``value`` is a string that is safe as one path component."""
    return isinstance(value, str) and _SLUG.fullmatch(value) is not None


def check_slug(value: object, field: str) -> str:
    """Return ``value`` if it is a slug; else raise a one-line :class:`ConfigError`.

    The message names the field, not the value: a refused value came from the other
    side and is not echoed into logs.
    """
    if not is_slug(value):
        raise ConfigError(
            f"{field} is not a plain name (letters, digits, '.', '_', '-'; no '/', no '..', "
            "not absolute); refused"
        )
    return str(value)


__all__ = ["SLUG_PATTERN", "check_slug", "is_slug"]

"""Griffe extension for the API reference: Sphinx roles in docstrings become code spans.

The docstrings cross-reference with reStructuredText roles (``:class:`TangentEngine```), which
Markdown would print verbatim as ":class:" followed by the name; they render as `TangentEngine`.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|attr|mod|data|obj|exc):`~?([^`]+)`")


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(r"`\1`", obj.docstring.value)

"""JSON parsing that keeps money exact and refuses what is not plain JSON."""

from __future__ import annotations

import json
from decimal import Decimal

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

# An order is three levels deep (the body, its items, an item); nothing the API takes is deeper.
MAX_DEPTH = 32


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a JSON value")


def _depth(value) -> int:
    """How deeply ``value``'s arrays and objects nest, without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, (list, dict)):
            deepest = max(deepest, depth)
            if depth > MAX_DEPTH:
                break
            pending.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return deepest


class DecimalJSONParser(JSONParser):
    """Parses JSON numbers with a fraction as ``Decimal`` so ``29.99`` never passes through a
    float. A body that is not strict JSON (``NaN``, ``Infinity``), not text in its charset, or
    nested deeper than ``MAX_DEPTH`` is a 400 like any malformed one."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        try:
            text = stream.read().decode(encoding)
            data = json.loads(text, parse_float=Decimal, parse_constant=_refuse_constant)
        except RecursionError:
            raise ParseError(f"Malformed JSON: nested deeper than {MAX_DEPTH} levels") from None
        # LookupError: a charset that names no text encoding (charset=rot13).
        except (ValueError, LookupError) as exc:
            raise ParseError(f"Malformed JSON: {exc}") from exc
        # Only a body with that many brackets can be that deep; str.count costs next to nothing.
        if text.count("[") + text.count("{") > MAX_DEPTH and _depth(data) > MAX_DEPTH:
            raise ParseError(f"Malformed JSON: nested deeper than {MAX_DEPTH} levels")
        return data

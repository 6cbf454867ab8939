"""Text a user opens in other programs: CSV cells a spreadsheet would run as formulas, Markdown that
class names could break.

A class name, a file name or an error message comes from the user's data; written as it is into a CSV,
a cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) is taken as a formula
by spreadsheet programs (CSV injection). Such text cells get a leading apostrophe, the usual
neutralisation; numbers are written as numbers and stay untouched.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+\-.!|~])")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def csv_cell(value: Any) -> Any:
    """``value`` as a safe CSV cell: text starting like a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _is_number(value):
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    """Every cell of a CSV row through :func:`csv_cell`."""
    return [csv_cell(v) for v in values]


def markdown_text(text: str) -> str:
    """``text`` with Markdown's special characters escaped, so a class name shows as written."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", str(text))

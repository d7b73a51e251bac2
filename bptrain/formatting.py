"""How bptrain writes numbers for people: the one formatter, used by trial ids, tables, charts
and messages alike. Plain Python, importable from every layer."""
from __future__ import annotations

import math
from typing import Any


def format_number(v: float, sig: int = 3) -> str:
    """A tick label: `sig` significant digits, scientific for |v| >= 1e5 or < 1e-3.

    >>> format_number(2.5e7), format_number(1.234e-4), format_number(0.59341), format_number(12)
    ('2.5e+07', '1.23e-04', '0.593', '12')
    """
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        mantissa, exp = f"{v:.{sig - 1}e}".split("e")
        if "." in mantissa:
            mantissa = mantissa.rstrip("0").rstrip(".")
        return f"{mantissa}e{exp}"
    decimals = max(0, sig - 1 - math.floor(math.log10(a)))
    s = f"{v:.{decimals}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s



def fmt(x: Any, digits: int = 4) -> str:
    """A metric for humans: '-' for missing, `digits` significant digits."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return str(x)
        return format_number(x, digits)
    return str(x)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def short_number(v: float) -> str:
    """4 significant digits, a compact exponent outside [1e-3, 1e5): 0.05, 1e-4, 2.5e7."""
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:.4g}"
    mantissa, exp = f"{v:.3e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exp)}"


def format_value(v: Any) -> str:
    """A setting as it appears in a trial id and a table: 1e-4, 0.1, 64x32, relu."""
    if isinstance(v, bool) or v is None:
        return str(v).lower()
    if isinstance(v, float):
        return short_number(v)
    if isinstance(v, list):
        return "x".join(format_value(x) for x in v) or "none"
    if isinstance(v, dict):
        return ",".join(f"{k}={format_value(x)}" for k, x in v.items())
    return str(v)



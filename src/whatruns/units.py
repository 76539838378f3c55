"""Units and readable numbers, shared by the CLI and the book."""

PF_DAY = 1e15 * 86400  # FLOPs in one petaflop/s-day: 8.64e19 (GPT-3, Table D.1)


def human(n: float, digits: int = 3, decimals: int = None) -> str:
    """A count in readable units, up to P (1e15) and E (1e18): 46702792704 -> '46.7B', 1.2e12 -> '1.2T',
    5130 -> '5.13k' (``digits`` significant figures); with ``decimals``, a fixed number of decimals instead:
    ``human(46702792704, decimals=2)`` -> '46.70B' (the CLI's tables)."""
    fmt = f".{decimals}f" if decimals is not None else f".{digits}g"
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:{fmt}}{unit}"
    if decimals is not None and float(n).is_integer():
        return f"{n:.0f}"
    return f"{n:{fmt}}"


def human_bytes(n: float, digits: int = 3) -> str:
    """Bytes in decimal units, as vendors print memory: 65248815744 -> '65.2 GB', 131072 -> '131 kB'."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.{digits}g} {unit}"
    return f"{n:.{digits}g} B"

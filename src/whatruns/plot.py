"""The book's house style for figures: one look, colour-blind-safe colours (Okabe and Ito).

>>> from whatruns.plot import figure, COLORS
>>> fig, ax = figure()            # styled axes, ready to draw on
"""

from __future__ import annotations

# Okabe-Ito: distinguishable under the common forms of colour blindness
COLORS = {
    "dense": "#0072B2",   # blue
    "moe": "#D55E00",     # vermillion
    "embedding": "#009E73",  # green
    "other": "#CC79A7",   # purple
    "grey": "#7F7F7F",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "yellow": "#F0E442",
}
CYCLE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "font.size": 10,
}


def apply_style() -> None:
    """Set the house style for every figure drawn after this call."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=CYCLE)


def figure(ncols: int = 1, nrows: int = 1, width: float = None, height: float = None, **kwargs):
    """A styled figure and its axes (``plt.subplots`` with the house style applied)."""
    import matplotlib.pyplot as plt

    apply_style()
    w, h = STYLE["figure.figsize"]
    size = (width or w * (1 if ncols == 1 else 0.8 * ncols), height or h * (1 if nrows == 1 else 0.8 * nrows))
    return plt.subplots(nrows, ncols, figsize=size, layout="constrained", **kwargs)


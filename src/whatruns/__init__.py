"""whatruns: count, build and measure what runs per input.

>>> import whatruns
>>> spec = whatruns.load("mixtral-8x7b")
>>> c = whatruns.count(spec, seq_len=4096)
>>> c.total_params, c.active_params

The torch-dependent parts (:func:`build`, :mod:`whatruns.measure`) are imported on first use,
so counting needs no torch.
"""

from .count import Count, count
from .spec import FFN, MoE, Attention, EmbeddingModel, Norm, SpecError, Table, Transformer

__all__ = ["Attention", "Count", "EmbeddingModel", "FFN", "MoE", "Norm", "SpecError", "Table",
           "Transformer", "build", "catalog", "count", "load"]


def load(source):
    """A spec from a catalog name, a path to a Hugging Face ``config.json``, or a config dict."""
    from .hf import load as _load
    return _load(source)


def build(spec, **kwargs):
    """A torch module for ``spec`` (see :func:`whatruns.nn.build`)."""
    from .nn import build as _build
    return _build(spec, **kwargs)


# The published models: ``whatruns.catalog.names()``, ``.entry(name)``, ``.table()``. A module, not a
# function: a function named ``catalog`` here would be replaced by the submodule the first time anything
# imports ``whatruns.catalog``. It needs no torch.
from . import catalog  # noqa: E402

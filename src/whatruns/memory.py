"""What FLOP counts leave out: bytes of weights and activations, arithmetic intensity, all-to-alls.

Chapter "What FLOPs don't count". A layer that runs on a batch of ``tokens`` tokens reads its
weights once for the whole batch and reads and writes every token's activations; its arithmetic
intensity (FLOPs per byte, :func:`whatruns.count.arithmetic_intensity`) says whether memory or
arithmetic limits it (the roofline, :func:`whatruns.count.roofline`). The byte counts here are
the least traffic: each matmul reads its input rows and its weight once and writes its output
rows once (:func:`whatruns.count.matmul_bytes`); norms, activations and caches are left out.

An MoE layer reads the weights of the distinct experts its batch reaches --
:func:`whatruns.count.experts_touched`, E(1 - (1 - k/E)^B) under uniform routing -- so one
token reads k experts, and a large batch reads all E. ``layer`` below is an
:class:`~whatruns.spec.FFN` (a dense FFN) or a :class:`~whatruns.spec.MoE`; ``bytes_per_element``
is 4 for fp32, 2 for bf16 (the default, how large models are served).
"""

from __future__ import annotations

from typing import Union

from .count import experts_touched, ffn_flops, ffn_params, moe_flops, router_params, shared_expert_params
from .spec import FFN, MoE, SpecError

Layer = Union[FFN, MoE]


def _ffn_matrices(D: int, f: FFN):
    """(in, out) of each weight matrix of an FFN: gate and up D -> F (or up alone), down F -> D."""
    return [(D, f.width)] * (f.matrices - 1) + [(f.width, D)]


def _activation_bytes(D: int, f: FFN, rows: float, b: int) -> float:
    return b * rows * sum(i + o for i, o in _ffn_matrices(D, f))


def layer_flops(D: int, layer: Layer, tokens: int) -> float:
    """Forward FLOPs of one FFN or MoE layer on ``tokens`` tokens: 2 per weight per row (the
    router's D x E matmul included; :func:`whatruns.count` counts the same)."""
    if isinstance(layer, FFN):
        return tokens * ffn_flops(D, layer)
    return tokens * moe_flops(D, layer)


def weight_bytes(D: int, layer: Layer, tokens: int, bytes_per_element: int = 2, touched: float = None) -> float:
    """Bytes of weights one layer reads for a batch of ``tokens`` tokens, each weight once.

    Dense: every weight, whatever the batch. MoE: the router, any shared expert, and the experts
    the batch reaches -- ``touched`` of them if given (e.g. counted from a real router), else the
    expectation under uniform routing, :func:`~whatruns.count.experts_touched`."""
    b = bytes_per_element
    if isinstance(layer, FFN):
        return b * ffn_params(D, layer)
    if touched is None:
        touched = experts_touched(layer.experts, layer.top_k, tokens)
    return b * (touched * ffn_params(D, layer.expert) + router_params(D, layer) + shared_expert_params(D, layer))


def activation_bytes(D: int, layer: Layer, tokens: int, bytes_per_element: int = 2) -> float:
    """Bytes of activations one layer reads and writes for ``tokens`` tokens: each matmul's input
    and output rows once. An MoE layer moves each token through k experts (k rows each), plus the
    router's input and its E scores."""
    b = bytes_per_element
    if isinstance(layer, FFN):
        return _activation_bytes(D, layer, tokens, b)
    shared = _activation_bytes(D, layer.shared, tokens, b) if layer.shared is not None else 0
    return (_activation_bytes(D, layer.expert, tokens * layer.top_k, b) + b * tokens * (D + layer.experts)
            + shared)


def layer_bytes(D: int, layer: Layer, tokens: int, bytes_per_element: int = 2, touched: float = None) -> float:
    """Least bytes one layer moves for a batch of ``tokens`` tokens: :func:`weight_bytes` +
    :func:`activation_bytes`. For a dense FFN this is the sum of
    :func:`~whatruns.count.matmul_bytes` over its matrices."""
    return weight_bytes(D, layer, tokens, bytes_per_element, touched) + activation_bytes(D, layer, tokens,
                                                                                         bytes_per_element)


def weight_bytes_per_token(D: int, layer: Layer, tokens: int, bytes_per_element: int = 2,
                           touched: float = None) -> float:
    """:func:`weight_bytes` shared out over the batch: what each token pays in weight reads.
    At one token a dense FFN reads all its weights and an MoE layer k experts'; as the batch
    grows the dense cost falls as 1/B, the MoE's more slowly, until the batch reaches every expert."""
    return weight_bytes(D, layer, tokens, bytes_per_element, touched) / tokens


def intensity(D: int, layer: Layer, tokens: int, bytes_per_element: int = 2, touched: float = None) -> float:
    """Arithmetic intensity of one layer at batch ``tokens``: :func:`layer_flops` per
    :func:`layer_bytes`. Compare with the machine's FLOP/s per byte/s (its ridge point)."""
    return layer_flops(D, layer, tokens) / layer_bytes(D, layer, tokens, bytes_per_element, touched)


def all_to_all_bytes(tokens: int, D: int, top_k: int, world: int, bytes_per_element: int = 2) -> float:
    """Bytes one all-to-all of an expert-parallel MoE layer sends between ranks, all ranks
    together, under uniform routing (GShard, Switch).

    ``tokens`` tokens, spread over ``world`` ranks, each send k rows of D activations to the
    ranks that hold their experts (experts split evenly); a row whose expert is on its own rank
    stays there, so a fraction (world - 1) / world of the k * tokens rows crosses. The dispatch
    sends this much and the combine sends it back: two all-to-alls per MoE layer."""
    if world < 1:
        raise SpecError(f"world must be at least 1, got {world}")
    return bytes_per_element * tokens * top_k * D * (world - 1) / world

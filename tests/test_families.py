"""Every model type whatruns reads (and every wrapper), built small: the module ``whatruns.build`` makes from
``whatruns.load(config)`` has exactly count()'s parameters and runs exactly count()'s FLOPs.

The configs are drawn from test_hf's generators -- the ones held there to transformers' own count --, so the
chain config -> spec -> count -> torch module is closed for every family: Gemma's per-layer embeddings and shared
keys and values, Qwen3-Next's DeltaNet, Nemotron-H's Mamba-2 and latent MoE, DeepSeek-V3.2's indexer, MiMo's
sinks, T5's encoder-decoder, BERT's encoder and MLM head, ... Only the configs small enough to build on a CPU in
a moment are kept (a default left out of a config can be large: 262,144 per-layer embedding rows for Gemma 4).
"""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from test_hf import GENERATORS
from whatruns import build, count, load
from whatruns.measure import count_flops

torch.set_num_threads(1)  # tiny tensors: threads only add waiting

MAX_PARAMS = 400_000  # built in float32 on the CPU, and run on a handful of tokens


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors is a no-op")
@pytest.mark.filterwarnings("ignore:torch._grouped_mm cannot run")  # tiny widths: the loop strategy, same FLOPs
@pytest.mark.parametrize("model_type", sorted(GENERATORS))
def test_built_model_has_count_params_and_flops(model_type):
    @settings(max_examples=4, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(cfg=GENERATORS[model_type], B=st.integers(1, 2), T=st.integers(1, 5), seed=st.integers(0, 3))
    def run(cfg, B, T, seed):
        spec = load(cfg)
        T = min(T, spec.positions or T)  # no more tokens than a learned position table has rows
        c = count(spec, seq_len=T)
        assume(c.total_params <= MAX_PARAMS)
        assume(not (_sparsemixer(spec) and spec.width == 1))  # see test_sparsemixer_with_zero_logits
        assume(_routable(spec))
        model = build(spec, seed=seed)
        assert sum(p.numel() for p in model.parameters()) == c.total_params
        # tokens the per-layer embedding table has rows for too (Gemma 4's may be shorter than the vocabulary)
        rows = min(spec.vocab, spec.per_layer_vocab or spec.vocab)
        ids = torch.randint(0, rows, (B, T), generator=torch.Generator().manual_seed(seed))
        assert count_flops(model, ids) == c.flops_per_token * B * T
        with torch.no_grad():
            out = model(ids)
        assert out.shape == (B, T, spec.vocab) and torch.isfinite(out).all()

    run()


def _routable(spec) -> bool:
    """Whether group-limited routing can route a token (as in transformers, it cannot when the groups do not
    split the experts, or a token may use more groups than there are): the config counts, but does not run."""
    moes = [r.block.ffn for _, stack in spec.stacks for r in stack if getattr(r.block.ffn, "kind", "") == "moe"]
    return all(m.experts % m.groups == 0 and m.group_top_k <= m.groups for m in moes)


def _sparsemixer(spec) -> bool:
    return any(getattr(r.block.ffn, "router", None) == "sparsemixer" for r in spec.blocks)


def test_sparsemixer_with_zero_logits():
    """transformers' sparsemixer drops the experts whose relative distance to the top logit is > 2 eps; where it
    is 0 / 0 (a logit equal to a top logit of 0) that is no drop, and the weights stay finite."""
    from whatruns.nn import _sparsemixer as route
    idx, w, _ = route(torch.zeros(1, 4))
    assert torch.isfinite(w).all()

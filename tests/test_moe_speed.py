"""The "gather" MoE strategy and the benchmark's models (chapter "What FLOPs don't count")."""

import math
import sys
from pathlib import Path

import pytest
import torch

import whatruns
from whatruns import FFN, MoE
from whatruns.count import ffn_flops
from whatruns.measure import count_flops
from whatruns.nn import MoELayer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import moe_speed  # noqa: E402


@pytest.mark.parametrize("cf", [None, 0.5, 1.0])
@pytest.mark.parametrize("gated", [True, False])
def test_gather_computes_what_the_loop_computes_on_padded_rows(cf, gated):
    D, E, k, N = 16, 4, 2, 24
    m = MoE(E, k, FFN(8, gated=gated, bias=True), capacity_factor=cf)
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(0))
    layers = {}
    for s in ("loop", "gather"):
        torch.manual_seed(0)
        layers[s] = MoELayer(D, m, s)
    with torch.no_grad():
        out = {s: layer(x) for s, layer in layers.items()}
    torch.testing.assert_close(out["gather"], out["loop"])
    C = math.ceil(cf * N * k / E) if cf else int(layers["loop"].load.max())
    assert count_flops(layers["gather"], x) == 2 * N * D * E + E * C * ffn_flops(D, m.expert)  # padding counted


def test_gather_is_accepted_by_build():
    spec = whatruns.load(moe_speed.hf_config("mixtral", 16) | {"hidden_size": 16, "num_attention_heads": 2,
                                                                "num_key_value_heads": 2, "num_local_experts": 4})
    ids = torch.randint(0, moe_speed.VOCAB, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(whatruns.build(spec, moe_strategy="gather")(ids),
                                   whatruns.build(spec, moe_strategy="loop")(ids))


def test_benchmark_models_match_flops_and_params_as_the_issue_asks():
    c = {name: whatruns.count(whatruns.load(cfg), seq_len=moe_speed.T) for name, cfg in moe_speed.SPECS.items()}
    router = 2 * moe_speed.D * moe_speed.E
    assert c["moe"].flops_per_token == c["same FLOPs (a)"].flops_per_token + router  # (a): the same active FLOPs
    assert c["moe"].total_params == c["same params (b)"].total_params + moe_speed.D * moe_speed.E  # (b): + the router
    assert c["same params (b)"].flops_per_token > 20 * c["moe"].flops_per_token

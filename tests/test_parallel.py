"""Expert parallelism over 2 gloo processes on 127.0.0.1 (chapter "What FLOPs don't count")."""

import pytest
import torch

from whatruns import FFN, MoE
from whatruns.parallel import expert_parallel
from whatruns.spec import SpecError


def test_expert_parallel_equals_one_process_and_sends_what_routing_says():
    m = MoE(8, 2, FFN(32), shared=FFN(16), shared_experts=1)
    D, tokens = 32, 128
    r = expert_parallel(D, m, tokens, world=2, timeout=120)
    torch.testing.assert_close(r["output"], r["reference"], rtol=1e-5, atol=1e-6)
    assert r["max_error"] < 1e-5
    dispatched = sum(s["dispatch"] for s in r["sent"])
    assert dispatched == r["crossing_rows"] * r["row_bytes"]  # every crossing row, D floats each
    assert sum(s["combine"] for s in r["sent"]) == dispatched  # the combine sends them all back
    assert r["sent"][0]["dispatch"] == r["sent"][1]["combine"]  # what rank 0 sent, rank 1 returns
    # random routing of random tokens: about half the k*tokens rows cross, as the formula expects
    assert 0.7 < dispatched / r["formula_bytes"] < 1.3


def test_expert_parallel_refuses_uneven_shards():
    with pytest.raises(SpecError):
        expert_parallel(16, MoE(3, 1, FFN(8)), 16, world=2)
    with pytest.raises(SpecError):
        expert_parallel(16, MoE(4, 1, FFN(8)), 15, world=2)

"""The experiment chapters' library: toy-model counts against torch, tasks, training determinism, the fit."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from whatruns.tasks import (ModularPairs, OrderTwoLanguage, ToyConfig, ToyModel, effective_params,
                            fit_power_law, fit_resting_worth, steps_to_reach, train_language, train_pairs)

CONFIGS = [
    ToyConfig(64, 64, 64),
    ToyConfig(64, 64, 1024),
    ToyConfig(64, 64, 64, experts=8),
    ToyConfig(64, 64, 64, experts=8, top_k=2),
    ToyConfig(59, 32, 16, experts=4, shared_width=16, classes=59, activation="gelu"),
    ToyConfig(59, 32, 128, classes=59),
]


def torch_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_params_match_torch(cfg):
    assert cfg.params() == torch_params(ToyModel(cfg))


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.name)
def test_flops_match_flop_counter(cfg):
    """FlopCounterMode (under no_grad) sees exactly the formula's FLOPs when the experts run as a
    loop of matmuls over their routed tokens, whatever the routing turns out to be."""
    model = ToyModel(cfg, strategy="loop")
    ctx = torch.randint(0, cfg.vocab, (300, cfg.context), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ctx)
    assert counter.get_total_flops() == cfg.flops_per_token() * len(ctx)


@settings(max_examples=25, deadline=None)
@given(V=st.integers(3, 40), D=st.integers(2, 24), F=st.integers(1, 24), E=st.integers(0, 6),
       k=st.integers(1, 3), S=st.integers(0, 8), classes=st.one_of(st.none(), st.integers(2, 30)))
def test_counts_for_any_config(V, D, F, E, k, S, classes):
    if E and k > E:
        k = E
    cfg = ToyConfig(V, D, F, experts=E, top_k=k, shared_width=S if E else 0, classes=classes)
    model = ToyModel(cfg, strategy="loop")
    assert cfg.params() == torch_params(model)
    # active = stored minus the experts a token skips and the embedding rows it does not read
    skipped = (E - k) * 2 * D * F if E else 0
    assert cfg.active_params() == cfg.params() - skipped - (cfg.context * V - cfg.context) * D
    # forward FLOPs are 2 per active matmul weight (embeddings are lookups, biases and norms no matmul)
    matmul_weights = cfg.active_params() - cfg.context * D - 2 * D - cfg.outputs
    assert cfg.flops_per_token() == 2 * matmul_weights
    assert cfg.block_params() - cfg.block_active_params() == skipped


def test_moe_flops_stay_flat_as_experts_grow():
    flops = {E: ToyConfig(64, 64, 64, experts=E).flops_per_token() for E in (2, 4, 8, 16, 32)}
    params = {E: ToyConfig(64, 64, 64, experts=E).params() for E in (2, 4, 8, 16, 32)}
    # only the router grows with E: 2*D FLOPs per expert
    assert all(flops[E] - flops[2] == 2 * 64 * (E - 2) for E in flops)
    assert params[32] > 6 * params[2]


def test_dispatch_is_real():
    """An expert a token is not routed to has no effect on that token's output."""
    cfg = ToyConfig(16, 8, 8, experts=4)
    torch.manual_seed(0)
    model = ToyModel(cfg)
    ctx = torch.randint(0, 16, (64, 2))
    before, choice = model(ctx).detach(), model.choice(ctx)
    with torch.no_grad():
        model.block.experts.down[3].mul_(2.0)
    after = model(ctx).detach()
    assert int(model.block.load.sum()) == len(ctx)
    elsewhere = choice != 3
    assert elsewhere.any() and (~elsewhere).any()
    assert torch.equal(before[elsewhere], after[elsewhere])
    assert not torch.allclose(before[~elsewhere], after[~elsewhere])


def test_language_floor_and_excess():
    task = OrderTwoLanguage(vocab=8, seed=1)
    assert torch.allclose(task.probs.sum(1), torch.ones(64, dtype=torch.float64))
    entropy = -(task.probs * task.probs.clamp_min(1e-300).log()).sum(1).mean()
    assert task.floor == pytest.approx(float(entropy))

    class Oracle(torch.nn.Module):  # predicts the true distribution: zero excess
        def forward(self, ctx):
            return task.probs[ctx[:, 0] * 8 + ctx[:, 1]].clamp_min(1e-300).log()

    assert abs(task.excess(Oracle())) < 1e-9
    assert task.excess(ToyModel(ToyConfig(8, 4, 4))) > 0


def test_language_samples_follow_the_table():
    task = OrderTwoLanguage(vocab=4, seed=0)
    ctx, y = task.sample(200_000, torch.Generator().manual_seed(0))
    c = ctx[:, 0] * 4 + ctx[:, 1]
    counts = torch.zeros(16, 4, dtype=torch.float64).index_put_((c, y), torch.ones(len(c), dtype=torch.float64),
                                                                accumulate=True)
    assert torch.allclose(counts / counts.sum(1, keepdim=True), task.probs, atol=0.02)


def test_training_is_deterministic():
    task = OrderTwoLanguage(vocab=16)
    cfg = ToyConfig(16, 16, 16, experts=4)
    a = train_language(cfg, task, seed=3, steps=30, batch=64, eval_every=10)
    b = train_language(cfg, task, seed=3, steps=30, batch=64, eval_every=10)
    c = train_language(cfg, task, seed=4, steps=30, batch=64, eval_every=10)
    assert a["curve"] == b["curve"] and a["curve"] != c["curve"]
    assert a["curve"][-1][1] < a["curve"][0][1] + 0.5
    assert torch.get_num_threads() >= 1 and not torch.are_deterministic_algorithms_enabled()


def test_modular_pairs():
    task = ModularPairs(p=11, rule="add", train_fraction=0.5, seed=0)
    assert len(task.train) + len(task.test) == 121 and len(task.train) == 60
    assert set(task.train.tolist()).isdisjoint(task.test.tolist())
    assert torch.equal(task.y, (task.x[:, 0] + task.x[:, 1]) % 11)
    memo = ModularPairs(p=11, rule="random", seed=0)
    assert len(memo.train) == 121 and len(memo.test) == 0
    assert torch.equal(memo.y, ModularPairs(p=11, rule="random", seed=0).y)
    with pytest.raises(ValueError):
        ModularPairs(rule="mul")


def test_train_pairs_reports_expert_split():
    task = ModularPairs(p=7, rule="add", train_fraction=0.6, seed=0)
    r = train_pairs(ToyConfig(7, 8, 4, experts=3, classes=7), task, steps=20, eval_every=10)
    assert sum(r["train_load"]) == len(task.train) and sum(r["test_load"]) == len(task.test)
    assert len(r["expert_test_acc"]) == 3 and 0 <= r["test_acc"] <= 1


def test_steps_to_reach():
    curve = [(100, 1.0), (200, 0.5), (300, 0.25)]
    assert steps_to_reach(curve, 2.0) == 100
    assert steps_to_reach(curve, 0.5) == 200
    assert steps_to_reach(curve, math.sqrt(0.5)) == pytest.approx(150)
    assert steps_to_reach(curve, 0.1) is None


def test_fit_recovers_a_planted_worth():
    n_dense = np.array([1e3, 2e3, 4e3, 8e3, 16e3])
    n_act = np.concatenate([n_dense, np.full(4, 1e3)])
    n_tot = np.concatenate([n_dense, [2e3, 4e3, 8e3, 16e3]])
    excess = 5.0 * effective_params(n_act, n_tot, 0.3) ** -0.4
    fit = fit_resting_worth(n_act, n_tot, excess)
    assert fit["w"] == pytest.approx(0.3, abs=1e-3)
    assert fit["alpha"] == pytest.approx(0.4, rel=1e-3)
    a, alpha, rms = fit_power_law(n_dense, 2.0 * n_dense ** -0.5)
    assert (a, alpha) == (pytest.approx(2.0), pytest.approx(0.5)) and rms < 1e-9


def test_config_validation():
    with pytest.raises(ValueError):
        ToyConfig(8, 8, 8, experts=2, top_k=3)
    with pytest.raises(ValueError):
        ToyConfig(8, 8, 8, shared_width=4)


def test_a_task_fingerprint_names_its_pairs_labels_and_split():
    """ModularPairs.fingerprint (stored beside chapter 8's sweep): the same task gives the same hash; another
    seed (another split or labelling), rule or fraction gives another."""
    fp = ModularPairs(59, "add", 0.5, seed=0).fingerprint()
    assert fp == ModularPairs(59, "add", 0.5, seed=0).fingerprint() and len(fp) == 16
    others = {ModularPairs(59, "add", 0.5, seed=1).fingerprint(), ModularPairs(59, "add", 0.8, seed=0).fingerprint(),
              ModularPairs(59, "random", 1.0, seed=0).fingerprint(), ModularPairs(53, "add", 0.5, seed=0).fingerprint()}
    assert fp not in others and len(others) == 4

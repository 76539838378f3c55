"""Experiment D (whatruns.recsys) and the embedding conventions of whatruns.count, for the chapter
"Embeddings: billions of parameters, a handful of rows"."""

import math

import pytest
import torch

import whatruns
from whatruns import recsys
from whatruns.count import ACTIVE_CONVENTIONS, active_params_as, rows_read
from whatruns.measure import count_flops, touched_params

SMALL = dict(ids=5_000, per_example=8, exponent=1.1, scale=0.5, seed=0)


@pytest.fixture(scope="module")
def task():
    return recsys.ClickTask(**SMALL)


# ------------------------------------------------------------------------------------------ the task

def test_task_is_zipf_and_deterministic(task):
    p = task.popularity
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-12)
    assert math.isclose(float(p[0] / p[9]), 10 ** 1.1, rel_tol=1e-9)  # (i + 1) ** -1.1
    a = task.sample(64, torch.Generator().manual_seed(3))
    b = task.sample(64, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    ids, labels, probs = a
    assert ids.shape == (64, 8) and ids.min() >= 0 and ids.max() < task.ids
    assert set(labels.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(probs, torch.sigmoid(task.weight[ids].sum(1)))


def test_popular_ids_are_drawn_most(task):
    ids, _, _ = task.sample(20_000, torch.Generator().manual_seed(0))
    freq = torch.bincount(ids.reshape(-1), minlength=task.ids).double() / ids.numel()
    assert abs(float(freq[0]) - float(task.popularity[0])) < 0.01


def test_losses():
    p = torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64)
    assert math.isclose(float(recsys.binary_entropy(torch.tensor(0.5))), math.log(2))
    # a model that predicts p exactly expects the entropy; any other prediction expects more
    exact = recsys.expected_loss(torch.logit(p), p)
    assert math.isclose(exact, float(recsys.binary_entropy(p).mean()), rel_tol=1e-12)
    assert recsys.expected_loss(torch.zeros(3), p) > exact
    assert recsys.constant_loss(p) == pytest.approx(float(recsys.binary_entropy(p.mean())))


def test_expected_distinct_matches_sampling(task):
    draws = 4096
    predicted = recsys.expected_distinct(task.popularity, draws)
    seen = [task.sample(draws // 8, torch.Generator().manual_seed(s))[0].unique().numel() for s in range(8)]
    assert abs(sum(seen) / len(seen) / predicted - 1) < 0.03
    assert recsys.expected_distinct(task.popularity, 1) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------ hashing

def test_hash_is_a_deterministic_function_into_the_table():
    ids = torch.arange(10_000)
    r = recsys.hash_rows(ids, 1000)
    assert torch.equal(r, recsys.hash_rows(ids, 1000)) and r.min() >= 0 and r.max() < 1000
    assert not torch.equal(r, recsys.hash_rows(ids, 1000, seed=1))
    assert torch.equal(recsys.hash_rows(ids.flip(0), 1000), r.flip(0))  # a function of the ID alone


@pytest.mark.parametrize("rows", [2 ** 12, 2 ** 16, 2 ** 20])
def test_hash_collides_about_as_often_as_chance(rows):
    n = 200_000
    distinct = recsys.hash_rows(torch.arange(n), rows).unique().numel()
    chance = rows * (1 - math.exp(-n / rows))
    assert abs(distinct / chance - 1) < 0.01


def test_shadowed_traffic_falls_with_rows(task):
    s = [recsys.shadowed_traffic(task, 2 ** k) for k in (4, 8, 12, 16, 20)]
    assert all(a > b for a, b in zip(s, s[1:]))
    assert s[-1] < 0.01 < 0.3 < s[0] <= 1


# ------------------------------------------------------------------------------------------ the model

@pytest.mark.parametrize("rows", [2 ** 4, 2 ** 10, 2 ** 16])
def test_params_and_flops(rows, task):
    m = recsys.HashedBagModel(rows)
    assert sum(p.numel() for p in m.parameters()) == recsys.model_params(rows) == 16 * rows + 577
    ids, _, _ = task.sample(32, torch.Generator().manual_seed(0))
    assert count_flops(m, ids) == 32 * recsys.flops_per_example() == 32 * 1088  # no term in rows


def test_sparse_gradient_holds_only_the_rows_read(task):
    m = recsys.HashedBagModel(2 ** 12, sparse=True)
    ids, labels, _ = task.sample(16, torch.Generator().manual_seed(1))
    t = touched_params(m, ids)
    g = m.table.weight.grad
    assert g.is_sparse
    read = m.rows_of(ids).unique()
    assert torch.equal(g.coalesce().indices()[0], read)
    assert t.per_param["table.weight"][0] == read.numel() * 16
    per_batch, ever = recsys.rows_read(m.rows_of(ids)[None])
    assert per_batch == ever == read.numel()


def test_sparse_and_dense_gradients_agree(task):
    ids, labels, _ = task.sample(16, torch.Generator().manual_seed(2))
    grads = []
    for sparse in (True, False):
        torch.manual_seed(0)
        m = recsys.HashedBagModel(256, sparse=sparse)
        torch.nn.functional.binary_cross_entropy_with_logits(m(ids), labels).backward()
        g = m.table.weight.grad
        grads.append(g.to_dense() if g.is_sparse else g)
    assert torch.allclose(*grads)


def test_optimizer_state_is_dense_for_both(task):
    """SparseAdam saves work, not memory: its two moment buffers are as big as the table."""
    ids, labels, _ = task.sample(8, torch.Generator().manual_seed(0))
    for sparse in (True, False):
        m = recsys.HashedBagModel(1024, sparse=sparse)
        opt, _ = recsys.optimizers(m, 1e-2, 1e-2)
        torch.nn.functional.binary_cross_entropy_with_logits(m(ids), labels).backward()
        opt.step()
        assert recsys.state_bytes(opt) == 2 * 1024 * 16 * 4


def test_sparse_adam_moves_only_rows_read_dense_adam_moves_more(task):
    """Adam's momentum keeps moving rows that earlier batches read; SparseAdam (lazy) does not."""
    a, b = (task.sample(4, torch.Generator().manual_seed(s)) for s in (10, 11))
    moved = {}
    for sparse in (True, False):
        torch.manual_seed(0)
        m = recsys.HashedBagModel(4096, sparse=sparse)
        opt, _ = recsys.optimizers(m, 1e-2, 1e-2)
        for ids, labels, _ in (a, b):
            before = m.table.weight.detach().clone()
            m.zero_grad(set_to_none=True)
            torch.nn.functional.binary_cross_entropy_with_logits(m(ids), labels).backward()
            opt.step()
        moved[sparse] = set((m.table.weight.detach() != before).any(1).nonzero().flatten().tolist())
    rows_a, rows_b = (set(m.rows_of(x[0]).flatten().tolist()) for x in (a, b))
    assert moved[True] == rows_b
    assert moved[False] == rows_a | rows_b


# ------------------------------------------------------------------------------------------ training

def test_training_is_deterministic_and_learns(task):
    kw = dict(task=task, seed=0, steps=15, batch=128)
    r1, r2 = recsys.train_click(2 ** 10, **kw), recsys.train_click(2 ** 10, **kw)
    assert r1.loss == r2.loss and r1.rows_ever == r2.rows_ever
    assert r1.floor < r1.loss < r1.constant  # better than knowing nothing, worse than knowing p
    assert 0 < r1.gap_closed < 1 and r1.excess == pytest.approx(r1.loss - r1.floor)
    assert r1.params == recsys.model_params(2 ** 10) and r1.flops_per_example == 1088
    assert r1.rows_per_batch <= r1.rows_ever <= 2 ** 10


def test_sweep_shares_examples_across_sizes(task):
    runs = recsys.sweep([2 ** 6, 2 ** 12], seeds=(0, 1), task=task, steps=10, batch=64)
    assert [(r.seed, r.rows) for r in runs] == [(0, 64), (0, 4096), (1, 64), (1, 4096)]
    assert len({r.floor for r in runs}) == 1  # one evaluation set for all
    assert all(r.rows_ever <= r.rows for r in runs)


def test_optimizer_step_seconds_runs(task):
    for sparse in (True, False):
        assert 0 < recsys.optimizer_step_seconds(256, sparse, batch=32, repeats=1, task=task) < 5


# ------------------------------------------------------------------------------------------ conventions

def test_active_conventions_on_a_language_model():
    s = whatruns.load("mixtral-8x7b")
    c = whatruns.count(s)
    one, whole, none = (active_params_as(c, k) for k in ACTIVE_CONVENTIONS)
    V, D = s.vocab, s.width
    assert one == c.active_params
    assert whole - one == (V - 1) * D  # every row of the input embedding, not one
    assert one - none == D + V * D  # the row read, and the LM head
    with pytest.raises(whatruns.SpecError):
        active_params_as(c, "some_rows")


def test_active_conventions_tied_and_dlrm():
    c = whatruns.count(whatruns.load("gpt3-small"))
    assert active_params_as(c, "whole_table") == c.total_params  # tied: the table is the head
    d = whatruns.load("dlrm-v2")
    cd = whatruns.count(d)
    assert active_params_as(cd, "whole_table") == cd.total_params
    assert active_params_as(cd, "one_row") - active_params_as(cd, "non_embedding") == rows_read(d) * d.dim

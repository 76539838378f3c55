"""Incremental decoding (a real KV cache): a prompt, then a token at a time, gives the logits of the full
forward pass, and the cache holds exactly the bytes whatruns.serve.kv_cache_bytes counts -- for every kind
of attention and state: MHA/GQA, sliding windows, chunks, sinks and soft-caps, MLA's latent (attended in
latent space), a sparse-attention indexer (own and shared), gated DeltaNet, Mamba-2, keys shared across
layers, learned positions."""

import pytest
import torch

from whatruns import FFN, Attention, Norm, Transformer
from whatruns.nn import Cache, build
from whatruns.serve import kv_cache_bytes
from whatruns.spec import Block, Indexer, LinearAttention, Mamba2, MoE, Rope

D = 16
MLA = dict(kv_lora_rank=5, rope_head_dim=2, q_lora_rank=4)
CASES = {
    "gqa": Transformer(vocab=11, width=D, layers=2, attention=Attention(4, 2, 4, rope=Rope(theta=100.0)), ffn=FFN(12)),
    "sliding": Transformer(vocab=11, width=D, layers=2, attention=Attention(4, 2, 4), ffn=FFN(12), sliding_window=3,
                           sliding_layers=[0]),
    "chunked": Transformer(vocab=11, width=D, blocks=[Block(Attention(4, 4, 4, chunk=3), FFN(8)),
                                                      Block(Attention(4, 4, 4), FFN(8))]),
    "sinks, soft-cap, scale": Transformer(vocab=11, width=D, layers=2, ffn=FFN(8), attention=Attention(
        4, 2, 4, sinks=True, softcap=2.0, scale=0.3, bias=True, out_bias=True)),
    "mla": Transformer(vocab=11, width=D, layers=2, ffn=FFN(8),
                       attention=Attention(4, 4, 6, v_head_dim=3, rope=Rope(interleaved=True), **MLA)),
    "sparse attention": Transformer(vocab=11, width=D, blocks=[
        Block(Attention(4, 4, 6, indexer=Indexer(2, 4, 3), **MLA), FFN(8)),
        Block(Attention(4, 4, 6, indexer=Indexer(2, 4, 3, shared=True), **MLA), FFN(8))]),
    "deltanet": Transformer(vocab=11, width=D, blocks=[
        Block(LinearAttention(4, 2, 4, 3, conv=3), FFN(8)),
        Block(Attention(4, 2, 4, gate="channel", qk_norm="head"), FFN(8))]),
    "mamba2": Transformer(vocab=11, width=D, blocks=[Block(Mamba2(4, 3, 5, 2, 4)), Block(Attention(4, 2, 4)),
                                                     Block(None, FFN(8, gated=False, activation="relu2"))]),
    "shared keys and values": Transformer(vocab=11, width=D, per_layer_input=2, per_layer_vocab=11, blocks=[
        Block(Attention(4, 2, 4, window=2, qk_norm="head"), FFN(8), post_norms=True),
        Block(Attention(4, 2, 8, values_from_keys=True, qk_norm="head"), FFN(8), post_norms=True),
        Block(Attention(4, 2, 4, window=2, qk_norm="head", kv_shared=True), FFN(8), post_norms=True)]),
    "llama 4: NoPE with temperature, L2 QK-norm, chunks": Transformer(vocab=11, width=D, blocks=[
        Block(Attention(4, 2, 4, qk_l2norm=True, chunk=3, rope=Rope(interleaved=True)), FFN(8)),
        Block(Attention(4, 2, 4, rope=None, temperature=0.5, temperature_floor=2), FFN(8))]),
    "gemma 4: value norm, dense beside experts, layer scalar": Transformer(
        vocab=11, width=D, layer_scalar=True, blocks=[Block(
            Attention(4, 2, 4, qk_norm="head", v_norm=True, scale=1.0),
            MoE(4, 2, FFN(4), shared=FFN(8), shared_experts=1, router="topk_softmax", router_scale=True),
            post_norms=True, extra_norms=3)] * 2),
    "learned positions": Transformer(vocab=11, width=D, layers=2, positions=16, tied=True,
                                     norm=Norm("layernorm", bias=True), ffn=FFN(32, gated=False, bias=True),
                                     attention=Attention(4, 4, 4, bias=True, out_bias=True, rope=None)),
}


def _indexer_ties(model, ids) -> bool:
    """Whether an indexer's choice of keys in the full pass has a tie at its edge: a key whose every head
    scores below 0 scores exactly 0 (ReLU), and two such keys may be picked in either order by the full
    pass and a step -- a different, equally right choice, not an error."""
    found = []

    def hook(indexer, inputs, output):
        x, q_latent = inputs[0], inputs[1]
        T = x.shape[1]
        i = indexer.i
        s = indexer.scores(x, q_latent)  # the indexer's own scores, before the causal mask
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        top = s.sort(dim=-1, descending=True).values
        for t in range(i.top_k, T):  # rows with more visible keys than picks
            found.append(bool((top[:, t, i.top_k - 1] - top[:, t, i.top_k]).abs().min() < 1e-6))

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m).__name__ == "Indexer"]
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return any(found)


@pytest.mark.parametrize("name", sorted(CASES))
def test_decoding_step_by_step_equals_the_full_pass_and_holds_the_counted_bytes(name):
    spec = CASES[name]
    for seed in range(10):  # the first draw with no tied choice of keys (every draw, but for an indexer)
        torch.manual_seed(seed)
        model = build(spec).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3)
        ids = torch.randint(0, spec.vocab, (2, 7), generator=torch.Generator().manual_seed(seed + 1))
        if not _indexer_ties(model, ids):
            break
    else:
        pytest.fail("every draw has a tied choice of keys")
    with torch.no_grad():
        full = model(ids)
        cache = Cache()
        steps = [model(ids[:, :3], cache=cache)]  # the prompt
        held = cache.nbytes()
        fork = cache.fork()  # a continuation of the prompt that leaves the cache as it is
        forked = [model(ids[:, 3:4], cache=fork), model(ids[:, 4:5], cache=fork)]
        assert cache.nbytes() == held and cache.length == 3 and fork.length == 5
        for t in range(3, 7):  # then one token at a time
            steps.append(model(ids[:, t:t + 1], cache=cache))
            assert cache.nbytes() == kv_cache_bytes(spec, t + 1, batch=2, dtype="float32").total
    got = torch.cat(steps, dim=1)
    assert float((got - full).abs().max()) <= 1e-5 * float(full.abs().max())
    assert torch.equal(torch.cat(forked, dim=1), got[:, 3:5])
    assert cache.length == 7


def test_the_cache_stays_flat_for_windows_and_states():
    """A sliding window keeps its last W positions, a recurrent layer its fixed state: past W tokens the
    cache of such a model does not grow."""
    spec = Transformer(vocab=11, width=D, blocks=[Block(Attention(4, 2, 4, window=2), FFN(8)),
                                                  Block(LinearAttention(4, 2, 4, 3), FFN(8))])
    model = build(spec).eval()
    cache, sizes = Cache(), []
    with torch.no_grad():
        for t in range(6):
            model(torch.tensor([[t % 11]]), cache=cache)
            sizes.append(cache.nbytes())
    assert sizes[1:] == [sizes[1]] * 5 and sizes[0] < sizes[1]

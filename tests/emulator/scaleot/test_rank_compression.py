"""Selective Rank Compression: requested ranks, factorised storage, GPT-2 Conv1D semantics, β = 1 no-op."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, tiny

from emulator.lm.architectures import architecture_of, attention_projections, get_layers
from emulator.scaleot.rank_compression import LowRankLinear, compress_attention_, kept_rank, projection_weight


def test_kept_rank_is_robust_to_float_noise():
    assert kept_rank(100, 100, 0.7) == 70  # 0.7 * 100 == 70.00000000000001
    assert kept_rank(576, 192, 0.8) == 154  # ceil(153.6)
    assert kept_rank(64, 64, 0.001) == 1


@pytest.mark.parametrize("name", TINY)
@pytest.mark.parametrize(("rank_keep", "factorized"), [(0.2, True), (0.8, False)])
def test_every_projection_has_the_requested_rank(name, rank_keep, factorized):
    model = copy.deepcopy(tiny(name)[0])
    transposed = architecture_of(model).transposed
    report = compress_attention_(model, [2, 5], rank_keep)
    for position in (2, 5):
        projections = attention_projections(model, get_layers(model)[position])
        assert set(report[position]) == set(projections)
        for path, module in projections.items():
            weight = projection_weight(module, transposed)  # (d_out, d_in)
            expected = kept_rank(*weight.shape, rank_keep)
            assert report[position][path].rank == expected
            assert report[position][path].factorized == factorized == isinstance(module, LowRankLinear)
            if factorized:
                assert module.down.weight.shape == (expected, weight.shape[1])
                assert module.up.weight.shape == (weight.shape[0], expected)
            assert torch.linalg.matrix_rank(weight.detach()) == expected
    ids = torch.randint(0, 1000, (2, 8))
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()


@pytest.mark.parametrize("name", TINY)
def test_full_rank_keep_changes_nothing(name):
    model = copy.deepcopy(tiny(name)[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modules = dict(attention_projections(model, get_layers(model)[3]))
    report = compress_attention_(model, [3], 1.0)
    assert all(info.rank == info.full_rank for info in report[3].values())
    assert attention_projections(model, get_layers(model)[3]) == modules
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("rank_keep", [0.2, 0.8])
def test_gpt2_conv1d_keeps_x_at_w_plus_b(rank_keep):
    model = copy.deepcopy(tiny("tiny-gpt2")[0])
    conv = get_layers(model)[2].attn.c_attn
    w, b = conv.weight.detach().clone(), conv.bias.detach().clone()  # w: (d_in, d_out)
    compress_attention_(model, [2], rank_keep)
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    r = kept_rank(w.shape[1], w.shape[0], rank_keep)
    best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]  # best rank-r approximation of (d_in, d_out)
    x = torch.randn(3, 4, w.shape[0])
    with torch.no_grad():
        torch.testing.assert_close(get_layers(model)[2].attn.c_attn(x), x @ best + b, atol=1e-5, rtol=1e-4)


def test_compressed_model_stays_close_at_high_rank():
    model, _ = tiny("tiny-llama")
    compressed = copy.deepcopy(model)
    compress_attention_(compressed, range(len(get_layers(model))), 0.95)
    ids = torch.randint(0, 1000, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, low = model(ids).logits, compressed(ids).logits
    assert (full - low).norm() < 0.1 * full.norm()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([2], 0.0), r"rank_keep=0.0 is out of range; allowed: \(0, 1\]"),
        (([8], 0.5), "block position 8 is out of range for a model with 8 blocks"),
    ],
)
def test_rejects_bad_arguments(args, message):
    model = copy.deepcopy(tiny("tiny-llama")[0])
    with pytest.raises(ValueError, match=message):
        compress_attention_(model, *args)


@pytest.mark.parametrize("rule", ["fraction", "energy"])
def test_beta_one_changes_nothing_under_either_rule(rule):
    model = copy.deepcopy(tiny("tiny-llama")[0])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = compress_attention_(model, range(len(get_layers(model))), 1.0, rank_rule=rule)
    assert all(
        not info.factorized and info.rank == info.full_rank for r in report.values() for info in r.values()
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95])
def test_energy_rank_keeps_the_stated_energy_and_no_more_rank_than_needed(energy):
    model = copy.deepcopy(tiny("tiny-llama")[0])
    weight = get_layers(model)[3].self_attn.q_proj.weight.detach().clone()  # (d_out, d_in)
    report = compress_attention_(model, [3], energy, rank_rule="energy", projections="q")
    rank = report[3]["self_attn.q_proj"].rank
    s = torch.linalg.svdvals(weight.double())
    share = torch.cumsum(s**2, 0) / (s**2).sum()
    assert share[rank - 1] >= energy - 1e-9 and (rank == 1 or share[rank - 2] < energy)
    kept = projection_weight(get_layers(model)[3].self_attn.q_proj, transposed=False).double()
    residual = (weight.double() - kept).norm() ** 2 / weight.double().norm() ** 2
    assert residual <= 1 - energy + 1e-6  # the discarded energy is at most 1 − β
    assert set(report[3]) == {"self_attn.q_proj"}  # k, v and o were not selected


def test_only_smaller_leaves_projections_whose_factors_would_be_larger():
    model = copy.deepcopy(tiny("tiny-llama")[0])
    layer = get_layers(model)[2].self_attn
    q_before = layer.q_proj.weight.detach().clone()
    report = compress_attention_(model, [2], 0.6, only_smaller=True)[2]
    # 64 × 64 q at rank 39: factors 39·128 > 64·64, so q is left as it is; 32 × 64 k at rank 20: 20·96 < 2048.
    assert torch.equal(layer.q_proj.weight, q_before) and report["self_attn.q_proj"].rank == 64
    assert isinstance(layer.k_proj, LowRankLinear) and report["self_attn.k_proj"].rank == 20

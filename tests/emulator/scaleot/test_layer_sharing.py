"""Layer sharing (CRaSh): ``crash`` and ScaleOT's ``share_replaced`` on tiny models of every family.

Copies reproduce the full model where they equal the blocks they replace; they are uniform LayerDrop's kept
blocks again, sharing tensors but not KV-cache slots; bundles store them once and tie them again; ScaleOT with
identity harmonizers is crash; stage 1 trains harmonizers as corrections of the shared blocks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TINY, tiny
from safetensors.torch import load_file

from emulator.config import EmulatorConfig
from emulator.config_parse import parse_value
from emulator.lm.architectures import architecture_of, get_layers
from emulator.lm.models import TINY_CONFIGS
from emulator.scaleot.assembly import Emulator, build_emulator, derive_emulator, stage1_twin
from emulator.scaleot.bundle import TENSORS, load_emulator, save_bundle
from emulator.scaleot.fit import check_fits
from emulator.scaleot.layer_replace import dynamic_layer_replace
from emulator.scaleot.layer_sharing import share_sources

IDS = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
# Adapters 1 + 1 leave middle blocks 1..6; α 0.5 keeps uniform LayerDrop's 1, 3, 6 and shares 2←3 (a tie:
# 1 and 3 are as near, the later wins), 4←3 and 5←6.
ONE_ONE = dict(adapter_bottom=1, adapter_top=1, alpha=0.5)
SOURCES = {2: 3, 4: 3, 5: 6}


def blocks() -> torch.Tensor:
    return torch.randint(0, 2000, (24, 16), generator=torch.Generator().manual_seed(0))


def build(model: torch.nn.Module, tokenizer, **values) -> Emulator:
    config = EmulatorConfig.of(**{"batch_size": 4, "stage1_steps": 2, **values})
    return build_emulator(model, config, blocks(), progress=False)


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def shared(emulator: Emulator) -> dict[int, int]:
    return {e.original: e.source for e in emulator.layer_map if e.source is not None}


def test_share_sources_takes_the_nearest_kept_block_and_the_later_one_on_ties():
    assert share_sources([2, 4, 5], [1, 3, 6]) == SOURCES
    assert share_sources([3], [1, 5]) == {3: 5} and share_sources([], []) == {}
    with pytest.raises(
        ValueError, match=r"needs a kept middle block to copy, but all of \[2, 3\] are removed"
    ):
        share_sources([2, 3], [])


@pytest.mark.parametrize("name", TINY)
def test_crash_reproduces_the_full_model_where_each_copy_equals_the_block_it_replaces(name):
    model, tokenizer = tiny(name)
    model = copy.deepcopy(model)
    layers = get_layers(model)
    for removed, source in SOURCES.items():
        layers[removed].load_state_dict(layers[source].state_dict())
    crash = build(model, tokenizer, method="crash", **ONE_ONE)
    assert shared(crash) == SOURCES
    assert torch.equal(logits(crash.model), logits(model))
    # Dropping those blocks instead (uniform LayerDrop) does not: the copies are what restores the output.
    assert not torch.allclose(
        logits(build(model, tokenizer, method="uniform", **ONE_ONE).model), logits(model)
    )


@pytest.mark.parametrize("name", TINY)
def test_crash_is_uniform_layerdrop_plus_copies_sharing_the_kept_tensors(name):
    model, tokenizer = tiny(name)
    uniform = build(model, tokenizer, method="uniform", **ONE_ONE)
    crash = build(model, tokenizer, method="crash", **ONE_ONE)
    placed = {e.original: e for e in crash.layer_map}
    for entry in uniform.layer_map:  # the same kept blocks, holding the same weights; dropped ones shared
        assert placed[entry.original].kind == ("shared" if entry.kind == "dropped" else entry.kind)
        if entry.kind != "dropped":
            mine = get_layers(crash.model)[placed[entry.original].position].state_dict()
            theirs = get_layers(uniform.model)[entry.position].state_dict()
            assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert crash.num_parameters == uniform.num_parameters  # a copy costs no parameter
    assert len(get_layers(crash.model)) == len(get_layers(model))
    layers = get_layers(crash.model)
    for removed, source in SOURCES.items():
        copy_, original = layers[placed[removed].position], layers[placed[source].position]
        assert copy_ is not original
        assert all(a is b for a, b in zip(copy_.parameters(), original.parameters(), strict=True))
        assert {m.layer_idx for m in copy_.modules() if isinstance(getattr(m, "layer_idx", None), int)} <= {
            placed[removed].position
        }
    assert not any(p.requires_grad for p in crash.model.parameters())


@pytest.mark.parametrize("name", TINY)
def test_a_crash_emulator_decodes_with_a_kv_cache_as_without(name):
    # One cache slot per position: a copy that kept its source's layer_idx would write the source's slot.
    model, tokenizer = tiny(name)
    emulator = build(model, tokenizer, method="crash", **ONE_ONE).model
    with torch.no_grad():
        whole = emulator(IDS, use_cache=False).logits[:, -1]
        prefix = emulator(IDS[:, :-1], use_cache=True)
        step = emulator(IDS[:, -1:], past_key_values=prefix.past_key_values, use_cache=True).logits[:, -1]
    assert torch.allclose(step, whole, atol=1e-5)


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
@pytest.mark.parametrize(
    "values",
    [
        {"method": "crash", "alpha": 0.5},
        {"method": "crash", "alpha": 0.5, "rank_keep": 0.5},  # copies of low-rank (factorised) sources
        {"method": "scaleot", "alpha": 0.5, "rank_keep": 0.5, "share_replaced": True},
    ],
    ids=["crash", "crash-src", "scaleot-shared"],
)
def test_bundle_round_trip_stores_shared_tensors_once_and_ties_them_again(tmp_path, name, values):
    if values["method"] == "scaleot" and name not in TINY:
        pytest.skip("stage 1 on the four main families is enough")
    model, tokenizer = tiny(name)
    emulator = build(model, tokenizer, **values)
    assert shared(emulator)
    save_bundle(emulator, tmp_path, name, tokenizer)
    loaded, _ = load_emulator(tmp_path)
    assert torch.equal(logits(loaded.model), logits(emulator.model))
    assert loaded.layer_map == emulator.layer_map and loaded.config == emulator.config
    assert (
        loaded.num_parameters == emulator.num_parameters == sum(p.numel() for p in loaded.model.parameters())
    )
    stored = load_file(str(tmp_path / TENSORS))
    path, layers = architecture_of(loaded.model).layers, get_layers(loaded.model)
    position = {e.original: e.position for e in loaded.layer_map}
    holders = {source: [f"{path}.{position[source]}."] for source in set(shared(loaded).values())}
    for entry in (e for e in loaded.layer_map if e.source is not None):
        inner = ".block" if entry.kind == "shared+harmonizer" else ""
        copy_ = layers[entry.position].get_submodule(inner.lstrip("."))
        source = layers[position[entry.source]]
        assert all(a is b for a, b in zip(copy_.parameters(), source.parameters(), strict=True))
        holders[entry.source].append(f"{path}.{entry.position}{inner}.")
    for prefixes in holders.values():  # a block and its copies: one of them holds the tensors
        assert sum(any(k.startswith(p) for k in stored) for p in prefixes) == 1
    if values == {"method": "crash", "alpha": 0.5}:  # the same tensors as uniform LayerDrop's bundle
        save_bundle(
            build(model, tokenizer, method="uniform", alpha=0.5), tmp_path / "uniform", name, tokenizer
        )
        numel = sum(t.numel() for t in stored.values())
        assert numel == sum(t.numel() for t in load_file(str(tmp_path / "uniform" / TENSORS)).values())


@pytest.mark.parametrize("name", TINY)
def test_scaleot_sharing_with_identity_harmonizers_is_crash_at_the_same_blocks(name):
    model, tokenizer = tiny(name)
    crash = build(model, tokenizer, method="crash", alpha=0.5)
    # No stage-1 step: the harmonizers are as initialised, the identity; selection='uniform' places them
    # at the blocks uniform LayerDrop removes (global scope: round(α·M) of them, as crash).
    values = dict(selection="uniform", replace_scope="global", stage1_steps=0, share_replaced=True)
    scaleot = build(model, tokenizer, method="scaleot", alpha=0.5, **values)
    assert shared(scaleot) == shared(crash) and shared(crash)
    assert {e.kind for e in scaleot.layer_map if e.source is not None} == {"shared+harmonizer"}
    assert torch.equal(logits(scaleot.model), logits(crash.model))


def test_scaleot_sharing_with_src_derived_from_its_saved_twin_equals_built(tmp_path):
    # The bundle cache derives SRC settings from the saved emulator without SRC: the copies must follow
    # their sources into their low-rank form there too.
    model, tokenizer = tiny("tiny-llama")
    values = dict(alpha=0.5, rank_keep=0.5, share_replaced=True)
    twin = stage1_twin(EmulatorConfig.of(batch_size=4, stage1_steps=2, **values))
    save_bundle(build(model, tokenizer, **twin.to_dict()), tmp_path, "tiny-llama", tokenizer)
    derived = derive_emulator(load_emulator(tmp_path)[0], twin.updated(rank_keep=0.5))
    built = build(model, tokenizer, **values)
    assert derived.layer_map == built.layer_map and derived.num_parameters == built.num_parameters
    assert {e.kind for e in built.layer_map} >= {"compressed", "shared+harmonizer"}
    torch.testing.assert_close(logits(derived.model), logits(built.model))
    layers, position = get_layers(derived.model), {e.original: e.position for e in derived.layer_map}
    for entry in (e for e in derived.layer_map if e.source is not None):
        copy_, source = layers[entry.position].block, layers[position[entry.source]]
        assert all(a is b for a, b in zip(copy_.parameters(), source.parameters(), strict=True))


@pytest.mark.parametrize("loss", ["local", "hidden", "kl"])
def test_stage1_trains_harmonizers_as_corrections_of_the_shared_blocks(loss):
    # Every middle block the same: a shared block is exactly the one it stands for, so with sharing each
    # mixed network is the full model (zero loss, equal policy losses: scores stay 0); without, it is not.
    model, tokenizer = tiny("tiny-llama")
    model = copy.deepcopy(model)
    layers = get_layers(model)
    for index in range(3, 6):
        layers[index].load_state_dict(layers[2].state_dict())
    values = dict(alpha=0.5, stage1_steps=2, batch_size=4, policy_interval=1, harmonizer_loss=loss)
    runs = {}
    for share in (True, False):
        config = EmulatorConfig.of(share_replaced=share, **values)
        runs[share] = dynamic_layer_replace(model, blocks(), blocks(), config, progress=False)
    assert runs[True].loss_curve[0] < 1e-10 < runs[False].loss_curve[0]
    assert set(runs[False].scores.values()) != {0.0}
    if loss != "kl":  # KL's gradient at zero is rounding noise, which Adam scales to full steps
        assert set(runs[True].scores.values()) == {0.0}


def test_stage1_with_sharing_moves_the_harmonizers_on_a_random_model():
    model, tokenizer = tiny("tiny-llama")
    config = EmulatorConfig.of(alpha=0.5, stage1_steps=2, batch_size=4, share_replaced=True)
    result = dynamic_layer_replace(model, blocks(), blocks(), config, progress=False)
    assert all(h.up.weight.abs().sum() > 0 for h in result.harmonizers.values())  # gradients reach them


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"method": "uniform", "share_replaced": True},
            "^emulator.share_replaced=true puts a harmonizer after each shared block, which "
            "method='uniform' has not; use it with method='scaleot'; method='crash' shares without",
        ),
        ({"method": "importance-drop", "share_replaced": True}, "which method='importance-drop' has not"),
        (
            {"method": "crash", "share_replaced": True},
            "which method='crash' has not; use it with method='scaleot'$",
        ),
        (
            {"method": "crash", "alpha": 1.0},
            "^emulator.alpha=1 with method='crash' keeps no middle block to share",
        ),
        ({"share_replaced": "yes"}, "^emulator.share_replaced='yes' must be true or false$"),
    ],
)
def test_bad_sharing_settings_are_one_line(values, message):
    with pytest.raises(ValueError, match=message) as error:
        EmulatorConfig.of(**values)
    assert "\n" not in str(error.value)


def test_share_replaced_reads_as_a_bool_and_is_keyed_only_when_set():
    assert EmulatorConfig.from_dict({"share-replaced": parse_value("yes")}).share_replaced is True  # --set
    assert "share_replaced" not in EmulatorConfig.of().build_dict()  # bundles built before keep their keys
    assert EmulatorConfig.of(share_replaced=True).build_dict()["share_replaced"] is True
    assert set(EmulatorConfig.of(method="crash").build_dict()) & {"data", "stage1"} == set()  # trains nothing


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"method": "crash", "alpha": 0.9}, "keep one of the 4 middle blocks for method='crash' to copy"),
        (
            {"share_replaced": True, "alpha": 0.9, "replace_scope": "global"},
            "keep a middle block for share_replaced to copy",
        ),
    ],
)
def test_sharing_without_a_kept_block_is_refused_before_any_build(values, message):
    with pytest.raises(ValueError, match=f"^emulator.alpha=0.9 does not fit the model; .*{message}"):
        check_fits(tiny("tiny-llama")[0], EmulatorConfig.of(**values))


def test_build_emulator_command_builds_crash(tmp_path, capsys):
    from simulations.cli import main

    assert (
        main(
            [
                "build-emulator",
                "--model",
                "tiny-llama",
                "--method",
                "crash",
                "--alpha",
                "0.5",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "shared: 3←2 4←5" in capsys.readouterr().out
    emulator, _ = load_emulator(tmp_path)
    assert emulator.config.method == "crash" and emulator.config.src.rank_keep == 1.0


def test_compare_plans_crash_from_its_list_and_scaleot_with_sharing_as_a_setting():
    from simulations.run_config import RunConfig
    from simulations.studies.compare import CompareConfig, plan

    base = RunConfig()
    settings = CompareConfig.from_dict(
        {"crash": [{"alpha": 0.25}], "scaleot": [{"alpha": 0.25, "share_replaced": True}]}
    )
    planned = {method.label(base.emulator): (method, config) for method, config in plan(base, settings)}
    method, config = planned["crash α=0.25"]
    assert (config.emulator.method, config.emulator.src.rank_keep) == ("crash", 1.0)
    assert method.slug(base.emulator) == "crash-a0.25"
    assert planned["scaleot α=0.25 β=1 share_replaced=True"][1].emulator.share_replaced is True

"""The method registry: each entry's traits agree with what assembly, the fit checks and the comparison do."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny

from emulator.config import EmulatorConfig
from emulator.data import corpus as corpus_module
from emulator.data.corpus import public_blocks
from emulator.methods import METHODS, method_spec, methods_with
from emulator.scaleot.assembly import build_emulator, derive_emulator, stage1_twin, uniform_choose
from emulator.scaleot.fit import check_fits
from simulations.studies.compare import CompareConfig
from simulations.studies.methods import compared_kinds, settings_field

# What the bundle cache keys each method on, and what each sets before a caller's values, as they were before
# the registry existed: a change here re-keys every cached bundle or changes what a comparison runs.
SECTIONS = {
    "scaleot": ("data", "stage1", "src"),
    "importance-drop": ("data", "stage1", "src"),
    "uniform+distill": ("data", "distill", "src"),
    "uniform": ("src",),
    "crash": ("src",),
    "full": (),
}
PRESETS = {
    "full": {"method": "full", "alpha": 0.0, "rank_keep": 1.0},
    "uniform": {"method": "uniform", "rank_keep": 1.0},
    "uniform+distill": {"method": "uniform+distill", "rank_keep": 1.0},
    "scaleot": {"method": "scaleot"},
    "importance-drop": {"method": "importance-drop", "rank_keep": 1.0},
    "crash": {"method": "crash", "rank_keep": 1.0},
}
FAST = {"stage1_steps": 2, "distill_steps": 2, "batch_size": 4, "policy_interval": 1, "seq_len": 16}
MIDDLE = [2, 3, 4, 5]  # tiny-llama: 8 blocks, 2 + 2 adapters


def config_of(name: str, **values) -> EmulatorConfig:
    alpha = {"alpha": 0.5} if METHODS[name].compresses else {}
    return EmulatorConfig.of(**{**METHODS[name].preset, **FAST, **alpha, **values})


def build(config: EmulatorConfig, blocks: torch.Tensor | None = None):
    model, _ = tiny("tiny-llama")
    if blocks is None:
        blocks = torch.randint(0, 2000, (24, 16), generator=torch.Generator().manual_seed(0))
    return build_emulator(model, config, blocks, progress=False)


def test_the_table_is_the_one_it_replaced():
    assert {n: m.sections for n, m in METHODS.items()} == SECTIONS
    assert {n: m.preset for n, m in METHODS.items()} == PRESETS
    assert all(name == spec.name for name, spec in METHODS.items())


@pytest.mark.parametrize("name", list(METHODS))
def test_each_preset_validates_and_keys_on_the_sections_its_traits_name(name):
    traits = METHODS[name]
    assert EmulatorConfig.of(**traits.preset).traits is traits
    # SRC on where the method allows it, so that every section it names is in use.
    config = EmulatorConfig.of(**{**traits.preset, "rank_keep": 0.5 if traits.compresses else 1.0})
    assert config.sections_used() == traits.sections
    top = {"method", "adapter_bottom", "adapter_top", "alpha"}
    assert set(config.build_dict()) - top == set(traits.sections)
    assert ("data" in traits.sections) == traits.reads_corpus
    assert traits.steps_field is None or traits.steps_field in config.to_dict()


@pytest.mark.parametrize("name", list(METHODS))
def test_traits_agree_with_what_assembly_builds(name):
    traits = METHODS[name]
    emulator = build(config_of(name))
    kinds = {e.original: e.kind for e in emulator.layer_map}
    middle = [kinds[i] for i in MIDDLE]
    removed = [i for i in MIDDLE if kinds[i] != "original"]
    assert bool(removed) == traits.compresses
    filled = {"nothing": "dropped", "harmonizer": "harmonizer", "copy": "shared"}[traits.fills]
    assert all(kinds[i] == filled for i in removed), middle
    assert bool(emulator.scores) == traits.stage1  # importance scores only where stage 1 ran
    if traits.removes == "uniform":
        assert [i for i in MIDDLE if i not in removed] == [MIDDLE[k] for k in uniform_choose(4, 2)]
    assert bool(emulator.loss_curve) == traits.reads_corpus  # stage 1 or distillation trained on blocks


@pytest.mark.parametrize("name", list(METHODS))
def test_a_method_reads_the_public_corpus_exactly_when_its_traits_say(name, monkeypatch):
    # public_blocks reads config.data.corpus only for a method that trains on it (a corpus that cannot be read
    # fails only such a method), and building such a method without blocks is refused.
    def unreadable(split, corpus, **kwargs):
        raise ValueError(f"{corpus} read")

    monkeypatch.setattr(corpus_module, "public_corpus", unreadable)
    config = config_of(name, corpus="pydoc")
    model, tokenizer = tiny("tiny-llama")
    if METHODS[name].reads_corpus:
        with pytest.raises(ValueError, match="pydoc read"):
            public_blocks(tokenizer, config)
        with pytest.raises(ValueError, match="pass public_blocks"):
            build_emulator(model, config, None, progress=False)
    else:
        assert public_blocks(tokenizer, config) is None
        build_emulator(model, config, None, progress=False)


@pytest.mark.parametrize("name", list(METHODS))
def test_seq_len_is_checked_for_every_method_that_reads_the_corpus(name):
    # Before the registry, importance-drop ran stage 1 on seq_len blocks without this check.
    config = config_of(name, seq_len=600)
    if METHODS[name].reads_corpus:
        with pytest.raises(ValueError, match="emulator.seq_len=600 does not fit the model"):
            check_fits(tiny("tiny-llama")[0], config)
    else:
        check_fits(tiny("tiny-llama")[0], config)


@pytest.mark.parametrize("name", methods_with(stage1=True))
def test_a_derived_method_is_its_twins_emulator_made_over(name):
    traits = METHODS[name]
    config = config_of(name, rank_keep=0.5)
    twin = stage1_twin(config)
    assert twin is not None and twin.method == traits.derived_from
    assert METHODS[twin.method].stage1 and METHODS[twin.method].harmonizers
    derived = derive_emulator(build(twin), config)
    built = build(config)
    assert derived.layer_map == built.layer_map
    assert stage1_twin(config_of(name, alpha=0.0, rank_keep=0.5)) is None  # no stage 1 to share (SRC only)


def test_only_stage1_methods_are_derived():
    assert {n for n, m in METHODS.items() if m.derived_from} == set(methods_with(stage1=True))


def test_a_comparison_lists_every_method_once_with_a_settings_list_each():
    kinds = compared_kinds()
    assert sorted(kinds) == sorted(METHODS)
    assert [METHODS[k].role for k in kinds][0] == "upper-bound" and METHODS[kinds[-1]].role == "proposed"
    assert [k for k in kinds if METHODS[k].role == "reference"] == ["uniform"]
    fields = set(CompareConfig.__dataclass_fields__)
    assert {settings_field(k) for k in kinds if METHODS[k].role != "upper-bound"} <= fields


def test_an_unknown_method_lists_the_known_ones():
    with pytest.raises(
        ValueError, match="emulator.method='drop' is not allowed; use one of 'scaleot', 'uniform'"
    ):
        method_spec("drop")

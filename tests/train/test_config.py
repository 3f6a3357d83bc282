"""The typed-config machinery every study uses (mclcore.train.config)."""
import argparse
import dataclasses
import json

import pytest

from mclcore.losses.mcl import MCLConfig
from mclcore.train.config import (add_config_flags, apply_overrides, config_diff, flag_overrides, from_dict, merge,
                                  to_dict)


@dataclasses.dataclass
class Inner:
    width: int = 4
    widths: tuple = (8, 8)
    clip: float | None = 10.0
    name: str | None = None


@dataclasses.dataclass
class Outer:
    seed: int = 0
    lr: float = 1e-3
    amp: bool = True
    inner: Inner = dataclasses.field(default_factory=Inner)
    mcl: MCLConfig = dataclasses.field(default_factory=MCLConfig)


def test_dict_round_trip_is_exact_and_json_able():
    cfg = Outer(seed=3, inner=Inner(widths=(1, 2, 3), clip=None), mcl=MCLConfig(tau=0.07, critic_hidden=(5,)))
    d = json.loads(json.dumps(to_dict(cfg)))
    assert from_dict(Outer, d) == cfg
    assert from_dict(Outer, {"inner": {"width": 9}}) == Outer(inner=Inner(width=9))   # missing -> defaults

    @dataclasses.dataclass
    class Study:
        mcl: MCLConfig = dataclasses.field(default_factory=lambda: MCLConfig(critic="image", proj_dim=64))

    # a partial section keeps the study's own defaults, not the section class's
    assert from_dict(Study, {"mcl": {"tau": 0.2}}).mcl == MCLConfig(critic="image", proj_dim=64, tau=0.2)


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match=r"config.inner: unknown Inner field\(s\) \['wdith'\]"):
        from_dict(Outer, {"inner": {"wdith": 3}})
    with pytest.raises(ValueError, match="expected a JSON object"):
        from_dict(Outer, {"inner": 3})


def test_merge_applies_nested_dicts_like_presets():
    cfg = merge(Outer(), {"lr": 0.1, "mcl": {"tau": 0.2}, "inner": {"widths": [3, 3]}})
    assert cfg.lr == 0.1 and cfg.mcl.tau == 0.2 and cfg.mcl.clip == 10.0 and cfg.inner.widths == (3, 3)


def test_set_overrides_parse_in_the_fields_type():
    cfg = apply_overrides(Outer(), ["seed=4", "amp=off", "inner.widths=1,2", "inner.clip=none", "mcl.tau=0.07",
                                    "inner.name=x", "mcl.critic_hidden=64,64"])
    assert (cfg.seed, cfg.amp, cfg.inner.widths, cfg.inner.clip, cfg.mcl.tau) == (4, False, (1, 2), None, 0.07)
    assert cfg.inner.name == "x" and cfg.mcl.critic_hidden == (64, 64)
    cfg = apply_overrides(Outer(inner=Inner(clip=None)), ["inner.clip=2.5"])
    assert cfg.inner.clip == 2.5                                  # float | None field, None now: a number
    for bad, msg in (("seed", "KEY=VALUE"), ("nope=1", "unknown config key"), ("x.y=1", "unknown config section"),
                     ("inner=1", "is a section"), ("seed=abc", "seed='abc'"), ("amp=maybe", "boolean")):
        with pytest.raises(ValueError, match=msg):
            apply_overrides(Outer(), [bad])


def test_config_diff_names_every_differing_leaf():
    a, b = to_dict(Outer()), to_dict(Outer(lr=0.5, mcl=MCLConfig(tau=0.3)))
    assert config_diff(a, b) == ["lr: saved 0.001 vs given 0.5", "mcl.tau: saved 0.1 vs given 0.3"]


def test_generated_flags_cover_every_leaf_and_read_back():
    p = argparse.ArgumentParser()
    add_config_flags(p, Outer, skip=("inner.name",))
    args = p.parse_args(["--lr", "0.5", "--no-amp", "--inner-widths", "1", "2", "--mcl-tau", "0.2",
                         "--mcl-critic-hidden", "16", "--mcl-clip", "3"])
    cfg = merge(Outer(), flag_overrides(args))
    assert (cfg.lr, cfg.amp, cfg.inner.widths, cfg.mcl.tau, cfg.mcl.critic_hidden, cfg.mcl.clip) == \
        (0.5, False, (1, 2), 0.2, (16,), 3.0)
    assert merge(Outer(), flag_overrides(p.parse_args([]))) == Outer()       # nothing given: nothing changes
    with pytest.raises(SystemExit):
        p.parse_args(["--inner-name", "x"])                                  # skipped


@pytest.mark.parametrize("field, value", [("tau", 0), ("tau", float("nan")), ("tau", True), ("clip", -5),
                                          ("critic", "conv"), ("activation", "elu"), ("critic_hidden", ()),
                                          ("proj_dim", 0), ("create_graph", 1)])
def test_mcl_config_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=f"mcl.{field}"):
        MCLConfig(**{field: value}).validate()


def test_check_numbers_names_what_a_config_cannot_mean():
    from mclcore.train.config import check_numbers

    @dataclasses.dataclass
    class Stages:
        lambda_mcl: float = 0.1
        base_lr1: float = 1e-3
        steps: int = 10
        batch_size: int = 8
        widths: tuple = (8, 8)

    @dataclasses.dataclass
    class Run:
        seed: int = 0
        stages: Stages = dataclasses.field(default_factory=Stages)

    check_numbers(Run())
    for key, value, msg in (("lambda_mcl", -1.0, ">= 0"), ("base_lr1", 0.0, "> 0"), ("base_lr1", float("inf"), "finite"),
                            ("steps", -1, ">= 0"), ("batch_size", 0, "> 0")):
        with pytest.raises(ValueError, match=f"stages.{key}: expected .*{msg}"):
            check_numbers(Run(stages=Stages(**{key: value})))
    with pytest.raises(ValueError, match="seed"):
        check_numbers(Run(seed=-2))

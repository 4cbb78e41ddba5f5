from __future__ import annotations

import dataclasses

import pytest

from negkit.config import ConfigError, check, check_options, from_dict, parse_range, replace, to_dict


@dataclasses.dataclass(frozen=True)
class Cfg:
    lr: float = 0.1
    epochs: int = 3
    widths: tuple[int, ...] = (16, 32)


def test_from_dict_defaults_overrides_and_tuples():
    cfg = from_dict(Cfg, {"lr": 0.5, "widths": [8, 8]}, epochs=7)
    assert cfg == Cfg(lr=0.5, epochs=7, widths=(8, 8))
    assert from_dict(Cfg) == Cfg()
    assert from_dict(Cfg, cfg) is cfg
    hash(cfg)  # frozen configs stay hashable after a JSON round trip


def test_unknown_key_names_culprit_and_valid_keys():
    with pytest.raises(ValueError, match=r"unknown Cfg key\(s\) \['lrr'\].*valid keys are \['lr', 'epochs', 'widths'\]"):
        from_dict(Cfg, {"lrr": 1.0})


def test_round_trip_and_replace():
    cfg = Cfg(lr=0.2)
    assert to_dict(cfg) == {"lr": 0.2, "epochs": 3, "widths": [16, 32]}
    assert from_dict(Cfg, to_dict(cfg)) == cfg
    assert replace(cfg, epochs=9).epochs == 9
    with pytest.raises(ValueError, match="epoch"):
        replace(cfg, epoch=9)


# ------------------------------------------------------------------ validation
@dataclasses.dataclass(frozen=True)
class Ranged:
    epochs: int = 3
    rate: float = 0.5
    sizes: tuple[int, ...] = (1, 2)
    clip: float | None = None
    mode: str = "a"

    RANGES = {"epochs": ">= 1", "rate": "[0, 1)", "sizes": "> 0", "clip": "> 0"}

    def __post_init__(self):
        check(self)


@pytest.mark.parametrize("spec,inside,outside", [
    (">= 1", [1, 7], [0.5, -1]), ("> 0", [1e-9], [0, -1]), ("<= 1", [1, -5], [1.01]), ("< 1", [0.99], [1]),
    ("[0, 1)", [0, 0.5], [1, -0.1]), ("(0, 1]", [1, 0.1], [0, 1.1]), ("[0, inf)", [0, 1e300], [-1]),
])
def test_parse_range_bounds(spec, inside, outside):
    rng = parse_range(spec)
    assert all(rng.problem(x) is None for x in inside)
    assert all(rng.problem(x) is not None for x in outside)
    assert rng.problem(float("nan")) is not None and rng.problem(float("inf")) is not None


def test_parse_range_nan_and_any():
    assert parse_range("finite or nan").problem(float("nan")) is None
    assert parse_range("finite or nan").problem(float("inf")) is not None
    assert parse_range("any").problem(float("-inf")) is None
    with pytest.raises(ValueError, match="not understood"):
        parse_range("between 0 and 1")


def test_check_lists_every_problem_with_its_field():
    with pytest.raises(ConfigError) as info:
        Ranged(epochs="3", rate=1.0, sizes=(1, 0), clip=-1.0, mode=2)
    text = str(info.value)
    for part in ("epochs='3'", "write 3", "rate=1.0 must be [0, 1)", "sizes=(1, 0) must be > 0",
                 "clip=-1.0 must be > 0", "mode=2", "expected a str"):
        assert part in text, part
    assert Ranged(sizes=[4, 5]).sizes == (4, 5)  # lists become tuples: the config stays hashable
    assert Ranged(clip=None).clip is None


def test_from_dict_checks_before_the_class_runs():
    with pytest.raises(ConfigError, match="sizes='12' is the string '12', expected a tuple of int"):
        from_dict(Ranged, {"sizes": "12"})
    with pytest.raises(ConfigError, match="must be built from a dict"):
        from_dict(Ranged, [])


def rule(task_vectors, density: float = 0.2, *, strict: bool = True):
    return {}


def test_check_options_against_a_signature():
    check_options(rule, {"density": 0.5, "strict": False}, "merge_options['rule']")
    with pytest.raises(ConfigError, match=r"takes no option\(s\) \['dens'\]; its options are \['density', 'strict'\]"):
        check_options(rule, {"dens": 0.5}, "merge_options['rule']")
    with pytest.raises(ConfigError, match="density='0.5'"):
        check_options(rule, {"density": "0.5"}, "x")
    with pytest.raises(ConfigError, match="NaN"):
        check_options(rule, {"density": float("nan")}, "x")
    with pytest.raises(ConfigError, match="task_vectors"):  # the caller's own argument is no option
        check_options(rule, {"task_vectors": []}, "x")
    check_options(lambda tvs, **kw: {}, {"anything": 1}, "x")  # **kwargs accepts every name


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Cfg = dataclasses.field(default_factory=Cfg)
    name: str = "o"


def test_nested_dataclasses_survive_from_dict_and_replace():
    o = from_dict(Outer, {"inner": {"lr": 0.3}})
    assert o.inner == Cfg(lr=0.3)
    r = replace(o, inner={"epochs": 9})
    assert r.inner == Cfg(lr=0.3, epochs=9)  # updated field by field, still a Cfg
    assert replace(o, name="p").inner is o.inner
    assert from_dict(Outer, to_dict(o)) == o

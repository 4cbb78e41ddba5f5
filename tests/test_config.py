from __future__ import annotations

import dataclasses

import pytest

from negkit.config import from_dict, replace, to_dict


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

"""A benchmark config is checked whole before any unit trains: bad values name their key, source and fix."""
from __future__ import annotations

import pytest

from negkit import benchmark as B
from negkit.cli import main


@pytest.mark.parametrize("options, message", [
    ({"ties": {"density": 1.5}}, r"merge_options\['ties'\] = \{'density': 1.5\}: ties density must be in \(0, 1\]"),
    ({"dare": {"p": 1.0}}, r"merge_options\['dare'\] = \{'p': 1.0\}: dare: p \(the drop rate\) must be in \[0, 1\)"),
    ({"ties": {"densty": 0.5}}, r"ties takes no option\(s\) \['densty'\]"),
])
def test_merge_option_values_are_refused_at_load(options, message):
    with pytest.raises(ValueError, match=message):
        B.make_config(merge_options=options)


def test_every_baseline_candidate_is_checked_with_the_closest_spelling():
    with pytest.raises(ValueError, match=r"baseline 'ft', candidate 'lrr0.1'.*Did you mean 'lr' for 'lrr'\?"):
        B.make_config(baseline_grid={"ft": {"lrr": (0.1,)}})
    with pytest.raises(ValueError, match=r"baseline 'salun', candidate 'lr-0.1'.*lr=-0.1 must be >= 0"):
        B.make_config(baseline_grid={"ft": {"lr": (0.1,)}, "salun": {"lr": (0.01, -0.1)}})
    B.make_config(baseline_grid={"ft": {"lr": (0.02, 0.1)}, "salun": {"lr": (0.01,)}})  # valid: no error


def test_the_cli_names_the_config_file_or_flag_a_bad_value_came_from(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_options:\n  ties: {density: 1.5}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--smoke", "--config", str(bad), "--run-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and f"{bad}: merge_options['ties']" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["benchmark", "--smoke", "--scenarios", "clas_3", "--run-dir", str(tmp_path / "run")])
    assert "error: --scenarios: unknown scenario 'clas_3'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_pool_override_changes_only_what_it_names():
    smoke = B.default_config(smoke=True, pool={"epochs": (1, 2, 3)})
    assert len(B.pool_configs(smoke)) == 6  # 3 epochs × the smoke pool's 1 weight decay × 2 label smoothings
    assert len(B.pool_configs(B.default_config(pool={"epochs": (4,)}))) == 4  # digits: 2 wd × 2 ls
    assert B.default_config(smoke=True, baseline_configs={"ft": {"lr": 0.5}}).baseline_configs["ft"] == {
        "epochs": 1, "lr": 0.5}


def test_cifar10_without_data_root_says_how_to_give_it():
    with pytest.raises(ValueError, match=r"needs data_root: the folder holding cifar-10-batches-py/ \(pass --data-root"):
        B.dataset_config("cifar10")

"""adapter/overlay.py: where each tuned value goes in a LightningCLI config, and the YAML."""

from __future__ import annotations

import yaml

from lightning_hyperopt.adapter.overlay import Entry, close, place, tuned_overlay, write_overlay


def entry(name, names, start, value, optimizer=False):
    return Entry(name, names, lambda v: close(v, start), lambda _: value, optimizer=optimizer)


def test_close_is_numeric_and_exact_up_to_round_off():
    assert close(0.1 + 0.2, 0.3) and close(1, 1.0)
    assert not close(True, 1.0) and not close("0.3", 0.3) and not close(0.3001, 0.3)


def test_the_optimizer_section_comes_first_in_subclass_mode():
    config = {
        "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"weight_decay": 0.01}},
        "model": {"weight_decay": 0.01},
    }
    wd = entry("weight_decay", ("weight_decay",), 0.01, 0.003, optimizer=True)
    assert place(config, wd) == (("optimizer", "init_args", "weight_decay"), 0.003)
    overlay, notes = tuned_overlay(config, [wd])
    assert notes == []
    # the class is kept beside its new arguments, so the overlay parses on its own
    assert overlay == {
        "optimizer": {"init_args": {"weight_decay": 0.003}, "class_path": "torch.optim.AdamW"}
    }


def test_a_model_argument_is_found_by_name_and_starting_value():
    config = {"model": {"class_path": "m.Net", "init_args": {"drop": 0.2, "dropout": 0.2}}}
    keep = entry("net.2.keep", ("dropout", "p"), 0.2, 0.35)
    assert place(config, keep) == (("model", "init_args", "dropout"), 0.35)
    # a key of another value is not the place (the config set it for something else)
    assert place({"model": {"dropout": 0.5}}, keep) is None
    # only the optimizer's section is searched for param-group settings, not `data`
    assert place({"data": {"dropout": 0.2}}, keep) is None


def test_values_with_no_place_or_sharing_one_are_notes_not_entries():
    config = {"model": {"lr": 0.001}}
    lr = entry("lr", ("lr",), 0.001, 0.002, optimizer=True)
    other = entry("head.lr", ("lr",), 0.001, 0.004, optimizer=True)
    missing = entry("l2", ("l2",), 0.1, 0.2)
    overlay, notes = tuned_overlay(config, [lr, other, missing])
    assert overlay == {}
    assert notes == [
        "l2: no config entry holds its starting value",
        "lr, head.lr: one config entry (model.lr) for different values",
    ]
    # two names with the same value for one place write it once
    same = entry("head.lr", ("lr",), 0.001, 0.002, optimizer=True)
    assert tuned_overlay(config, [lr, same]) == ({"model": {"lr": 0.002}}, [])


def test_the_written_yaml_round_trips_the_floats_exactly(tmp_path):
    value = 0.1 + 0.2  # not a short decimal
    path = tmp_path / "tuned.yaml"
    write_overlay(path, {"model": {"lr": value}}, ["first line", "", "method: x"])
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# first line\n#\n# method: x\n")
    assert yaml.safe_load(text) == {"model": {"lr": value}}
    write_overlay(path, {}, ["nothing"])
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == {}


def test_a_learning_rate_factor_scales_the_schedule_around_it():
    """λ scaled the whole schedule (η_t = λ·lr_t): its other rates are written × λ too."""
    config = {
        "model": {"class_path": "m.Net", "init_args": {"lr": 0.1, "final_lr": 0.01, "seed": 0}},
        "lr_scheduler": {
            "class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
            "init_args": {"T_max": 100, "eta_min": 1e-4},
        },
    }
    lr = Entry("lr", ("lr",), lambda v: close(v, 0.1), lambda _: 0.2, optimizer=True, scale=2.0)
    overlay, notes = tuned_overlay(config, [lr])
    assert notes == []
    assert overlay == {
        "model": {"init_args": {"lr": 0.2, "final_lr": 0.02}, "class_path": "m.Net"},
        "lr_scheduler": {
            "init_args": {"eta_min": 2e-4},
            "class_path": "torch.optim.lr_scheduler.CosineAnnealingLR",
        },
    }


def test_a_declared_value_may_sit_under_a_longer_name():
    config = {"model": {"init_lambda": 0.0, "seed": 0, "lam_bounds": 0.0}}
    lam = Entry(
        "lam",
        ("lam", "init_lam", "lam_init"),
        lambda v: close(v, 0.0),
        lambda _: 0.24,
        abbreviates=True,
    )
    # `seed` has the starting value but not the name, `lam_bounds` is another word
    assert place(config, lam) == (("model", "init_lambda"), 0.24)
    assert place({"model": {"lam_bounds": 0.0}}, lam) is None
    exact = Entry("lam", ("lam",), lambda v: close(v, 0.0), lambda _: 0.24)
    assert place(config, exact) is None

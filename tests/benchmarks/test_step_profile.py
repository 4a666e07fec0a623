"""bench step-profile: the engine's phases per step, timed and counted in torch operators."""

from benchmarks.studies.step_profile import configurations, lambda_step_cost, profile


def test_the_phases_are_timed_and_counted():
    """Every phase does work; with one λ update in 4 steps the update phase calls fewer
    operators per step than with one per step (its g_V pass comes once in 4)."""
    configs = configurations()
    every4 = profile(configs["FirstOrder, 1 L2, k=4 (the default)"], steps=4, warmup=4)
    every1 = profile(configs["FirstOrder, 1 L2, k=1"], steps=4, warmup=4)
    for result in (every4, every1):
        assert all(v > 0 for v in result["ops"].values())
        assert all(v >= 0 for v in result["seconds"].values())
    assert every4["ops"]["update"] < every1["ops"]["update"] / 2


def test_the_lambda_step_alone_is_timed_and_counted():
    """The λ step after g_V does work, and less than the whole update phase of a step."""
    config = configurations()["FirstOrder, 4 L2, k=1"]
    seconds, ops = lambda_step_cost(config, repeats=5)
    assert seconds > 0 and 0 < ops < profile(config, steps=2, warmup=2)["ops"]["update"]

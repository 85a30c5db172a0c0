"""Registry: lookup, sorted error messages, duplicate registration, the package's registries."""

import pytest

from papo.algos import ADVANTAGE_ESTIMATORS, AGGREGATIONS, KL_ESTIMATORS, POLICY_LOSSES, Registry


def test_register_and_get():
    reg = Registry("widget")

    @reg.register("zeta")
    def zeta():
        return "z"

    reg.register("alpha")(lambda: "a")
    assert reg.get("zeta") is zeta
    assert reg.get("alpha")() == "a"
    assert reg.names() == ["alpha", "zeta"]
    assert "zeta" in reg and "beta" not in reg and len(reg) == 2


def test_unknown_name_lists_sorted_valid_names():
    reg = Registry("widget")
    for name in ("m", "b", "x"):
        reg.register(name)(lambda: None)
    with pytest.raises(ValueError) as err:
        reg.get("q")
    assert str(err.value) == "Unknown widget 'q'. Valid names: ['b', 'm', 'x']"


def test_duplicate_registration_raises():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
    assert reg.get("a")() == 1


def test_package_registries_and_errors():
    assert ADVANTAGE_ESTIMATORS.names() == ["dr_grpo", "grpo", "rloo"]
    assert POLICY_LOSSES.names() == ["gspo", "ppo_clip"]
    assert KL_ESTIMATORS.names() == ["abs", "k1", "k2", "k3", "low_var_kl"]
    assert AGGREGATIONS.names() == [
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
        "token-mean",
    ]
    with pytest.raises(ValueError, match=r"Unknown policy loss 'ppo'. Valid names: \['gspo', 'ppo_clip'\]"):
        POLICY_LOSSES.get("ppo")
    with pytest.raises(ValueError, match=r"\['dr_grpo', 'grpo', 'rloo'\]"):
        ADVANTAGE_ESTIMATORS.get("gae")
    with pytest.raises(ValueError, match="already registered"):
        KL_ESTIMATORS.register("k3")(lambda a, b: a)

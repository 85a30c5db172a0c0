"""Registry (the one registry class of papo.algos and papo.rewards): lookup, sorted error messages, duplicate
registration, the package's registries."""

import pytest

from papo.algos import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Registry,
    UnknownNameError,
)


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


def test_lookup_by_subscript_iteration_and_unregister():
    reg = Registry("widget")
    for name in ("b", "a"):
        reg.register(name)(lambda n=name: n)
    assert reg["a"]() == "a" and list(reg) == ["a", "b"]
    with pytest.raises(UnknownNameError) as err:
        reg["q"]
    # one error for both uses: a mapping lookup (KeyError) and a config value (ValueError)
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    assert str(err.value) == "Unknown widget 'q'. Valid names: ['a', 'b']"
    reg.unregister("a")
    assert reg.names() == ["b"] and "a" not in reg
    with pytest.raises(UnknownNameError, match=r"Unknown widget 'a'. Valid names: \['b'\]"):
        reg.unregister("a")


def test_unhashable_name_is_an_unknown_name():
    reg = Registry("widget")
    reg.register("a")(lambda: 1)
    assert ["a"] not in reg
    with pytest.raises(UnknownNameError, match=r"Unknown widget \['a'\]"):
        reg.get(["a"])


def test_error_class_per_registry():
    class UnknownWidget(UnknownNameError):
        pass

    reg = Registry("widget", error=UnknownWidget)
    with pytest.raises(UnknownWidget):
        reg.get("x")


def test_rewards_use_the_same_registry_class():
    from papo.rewards import REWARD_FUNCTIONS, UnknownRewardFunctionError, score_response

    assert isinstance(REWARD_FUNCTIONS, Registry) and isinstance(ADVANTAGE_ESTIMATORS, Registry)
    assert issubclass(UnknownRewardFunctionError, UnknownNameError)
    with pytest.raises(UnknownRewardFunctionError, match=r"Unknown reward function 'maths'. Valid names: \["):
        REWARD_FUNCTIONS["maths"]
    with pytest.raises(ValueError, match="already registered"):
        REWARD_FUNCTIONS.register("math")(score_response)

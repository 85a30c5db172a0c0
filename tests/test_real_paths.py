"""The paths researchers run on GPUs, exercised on CPU: the published experiment configs (each runs one RL step
with its model swapped for the tiny stand-in of the same architecture and its hub dataset for a local parquet
file with the same columns; the embedded experiments run one step too, with tiny sizes), the Qwen2.5-VL / Qwen3-VL stand-ins, LoRA with the reference = base model with
adapters disabled, and clear errors for backends/strategies whose package is missing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from papo.config_validation import ConfigError, validate_config
from papo.data.digits import build_digits_split

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
#: every experiment of configs/experiment except the embedded ones and the shared _published fragment
EXPERIMENTS = sorted(
    p.stem for p in (CONFIGS / "experiment").glob("*.yaml") if not p.stem.startswith(("_", "embedded"))
)
#: the published recipes of the other perception-aware methods (configs/method; docs/methods.md): their own
#: models, data and schedules, so not PAPO's shared settings
OTHER_METHODS = [n for n in EXPERIMENTS if n.startswith(("vppo", "noisyrollout"))]
#: the published PAPO / GRPO / DAPO runs (configs/experiment/_published.yaml)
PAPO_RUNS = [n for n in EXPERIMENTS if n not in OTHER_METHODS]
#: CPU-test overrides a recipe needs beyond compose_run_cfg's (the stand-in runs groups of 2 responses)
STAND_IN_EXTRA = {"noisyrollout_7b_geo3k": ["rollout_view.num_noisy=1", "algo.num_minibatches=3"]}
#: the experiments on the embedded task (tiny model, procedural data, CPU; no hub)
EMBEDDED = sorted(p.stem for p in (CONFIGS / "experiment").glob("embedded*.yaml"))


def compose_run_cfg(make_cfg, name: str, data_file: str, out: Path, extra: list[str] | None = None):
    """``experiment=name`` on CPU: the tiny stand-in of its model family (all other model options kept), its
    hub datasets replaced by ``data_file`` (same columns), one rollout batch of 3 prompts, short responses."""
    return make_cfg(
        [
            f"experiment={name}",
            "trainer=cpu",
            "trainer.devices=1",
            "trainer.num_nodes=1",
            "trainer.max_steps=3",  # one rollout batch = 3 optimiser steps (algo.num_minibatches)
            "trainer.val_check_interval=null",
            "trainer.enable_progress_bar=false",
            "model.stand_in=tiny",
            "model.min_pixels=3136",  # the stand-in's 4 image tokens per 56 px image
            "model.max_pixels=12544",
            f"data.train_dataset.source={data_file}",
            f"data.val_dataset.source={data_file}",
            "data.val_dataset.limit=4",
            "data.batch_size=3",
            "data.num_workers=0",
            "algo.group_size=2",
            "algo.micro_batch_size=4",
            "algo.dynamic_sampling.enabled=false",  # a random-init policy never solves a group
            "rollout.max_new_tokens=4",
            "rollout.max_prompt_length=512",
            "validate_before=false",
            "validate_after=false",
            # the weights may move only through the loss: no weight decay, and a coin-flip reward so that the
            # random-init stand-in's groups have non-zero advantages (its real reward would be 0 everywhere);
            # lr 1e-3 makes one step visible in float32
            "optim.lr=1e-3",
            "optim.weight_decay=0",
            "reward.name=coin",
            "logger=none",
            "callbacks=[rank_sync]",
            f"callbacks.rank_sync.output_dir={out / 'sync'}",
            *(extra or []),
        ],
        tiny=False,
    )


def compose_embedded_cfg(make_cfg, name: str, out: Path):
    """``experiment=name`` (an embedded one) with the test suite's tiny sizes: 4 prompts x G=4, 8 new tokens,
    the 3-step warm start the other tests share (cached), one RL step, no validation, no logger."""
    return make_cfg(
        [
            f"experiment={name}",
            "trainer=cpu",
            "trainer.max_steps=1",  # one rollout batch = one optimiser step (algo.num_minibatches=1)
            "trainer.val_check_interval=null",
            "trainer.enable_progress_bar=false",
            "data.batch_size=4",
            "data.train_dataset.size=64",
            "data.val_dataset.size=8",
            "data.test_dataset.size=8",
            "algo.group_size=4",
            "algo.dynamic_sampling.enabled=false",
            "rollout.max_new_tokens=8",
            "warm_start.max_steps=3",
            "warm_start.batch_size=8",
            "validate_before=false",
            "validate_after=false",
            "optim.weight_decay=0",  # the weights may move only through the loss
            "reward.name=coin",
            "logger=none",
            "callbacks=[rank_sync]",
            f"callbacks.rank_sync.output_dir={out / 'sync'}",
            "num_threads=1",
        ],
        tiny=False,
    )


#: reward.name=coin: the fair-coin test reward of conftest.py
pytestmark = pytest.mark.usefixtures("coin_reward")


@pytest.fixture(scope="module")
def local_parquet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A local file with ViRL39K's columns (images, problem, answer) and real (digit) images."""
    path = tmp_path_factory.mktemp("local_data") / "virl39k_like.parquet"
    build_digits_split("train", 12, seed=0).select_columns(["images", "problem", "answer"]).to_parquet(
        str(path)
    )
    return str(path)


# ------------------------------------------------------------------------------------------ composition
@pytest.mark.parametrize("name", PAPO_RUNS)
def test_experiment_composes_with_the_published_hyperparameters(name: str) -> None:
    from conftest import compose_cfg

    header = (CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    # hub access is off by default (papo.utils.run_env): the command must turn it on
    command = f"#   PAPO_ALLOW_HUB=1 python src/train.py experiment={name}"
    assert any(line.rstrip() == command for line in header[:4]), "command comment"
    assert any("Hardware:" in line and "H100" in line for line in header[:5]), "hardware comment"
    cfg = compose_cfg([f"experiment={name}"])
    validate_config(cfg)
    # every hyperparameter against the released scripts: tests/test_released_scripts.py; here what all share
    assert cfg.warm_start.enabled is False and cfg.data.dataset_name == "virl39k"
    assert cfg.trainer.precision == "bf16-mixed" and cfg.trainer.max_steps == 606
    assert (
        cfg.algo.group_size == 5
        and cfg.algo.num_minibatches == 3
        and cfg.algo.loss_normalizer == "micro_batch_mean"
    )
    if "qwen3" not in name:
        assert int(cfg.trainer.devices) == (4 if name.endswith("7b") else 2)


@pytest.mark.parametrize("name", OTHER_METHODS)
def test_other_method_recipe_header_and_composition(name: str) -> None:
    """VPPO's and NoisyRollout's recipes: the command and hardware comments, and a valid config (their
    hyperparameters: tests/test_methods_recipes.py)."""
    from conftest import compose_cfg

    header = (CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    command = f"#   PAPO_ALLOW_HUB=1 python src/train.py experiment={name}"
    assert any(line.rstrip() == command for line in header[:5]), "command comment"
    assert any("Hardware:" in line for line in header[:6]), "hardware comment"
    validate_config(compose_cfg([f"experiment={name}"]))


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_experiment_header_and_composition(name: str) -> None:
    from conftest import compose_cfg

    header = (CONFIGS / "experiment" / f"{name}.yaml").read_text().splitlines()
    assert header[0] == "# @package _global_"
    assert any(line.rstrip() == f"#   python src/train.py experiment={name}" for line in header[:4])
    assert any(line.startswith("# Hardware: CPU (2 cores)") for line in header[:5]), "hardware comment"
    cfg = compose_cfg([f"experiment={name}"])
    validate_config(cfg)
    assert cfg.data.dataset_name == "synthetic" and cfg.model.path is None  # embedded: nothing downloads
    assert cfg.trainer.accelerator == "cpu" and "embedded" in cfg.tags


#: each data option's splits: (loader, source, hub split, hub config name, column mapping, row filter)
_HUB = "papo.data.hub.load_split"
_MATHVERSE = (
    _HUB,
    "AI4Math/MathVerse",
    "testmini",
    "testmini",
    {"image": "images", "query_wo": "problem", "answer": "answer", "problem_version": "task_type"},
    {"question_type": ["multi-choice"]},
)
DATA_SPLITS = {
    "virl39k": {
        "train": (_HUB, "PAPOGalaxy/PAPO_ViRL39K_train", "train", None, None, None),
        "val": (_HUB, "PAPOGalaxy/PAPO_MMK12_test", "train", None, None, None),
        "test": None,
    },
    "geometry3k": {
        "train": (_HUB, "hiyouga/geometry3k", "train", None, None, None),
        "val": (_HUB, "hiyouga/geometry3k", "validation", None, None, None),
        "test": (_HUB, "hiyouga/geometry3k", "test", None, None, None),
    },
    "mmk12": {
        "train": (_HUB, "PAPOGalaxy/PAPO_ViRL39K_train", "train", None, None, None),
        "val": (_HUB, "PAPOGalaxy/PAPO_MMK12_test", "train", None, None, None),
        "test": (_HUB, "PAPOGalaxy/PAPO_MMK12_test", "train", None, None, None),
    },
    "clevr_count": {
        "train": (_HUB, "BUAADreamer/clevr_count_70k", "train", None, None, None),
        "val": (_HUB, "BUAADreamer/clevr_count_70k", "test", None, None, None),
        "test": (_HUB, "BUAADreamer/clevr_count_70k", "test", None, None, None),
    },
    "mathverse": {
        "train": (_HUB, "PAPOGalaxy/PAPO_ViRL39K_train", "train", None, None, None),
        "val": _MATHVERSE,
        "test": _MATHVERSE,
    },
    "digits": {
        "train": ("papo.data.digits.build_digits_split", None, "train", None, None, None),
        "val": ("papo.data.digits.build_digits_split", None, "val", None, None, None),
        "test": ("papo.data.digits.build_digits_split", None, "test", None, None, None),
    },
}


@pytest.mark.parametrize("option", sorted(DATA_SPLITS))
def test_data_configs_load_the_right_source_split_and_columns(option: str) -> None:
    from conftest import compose_cfg

    cfg = compose_cfg([f"data={option}"])
    assert cfg.data._target_ == "papo.data.datamodule.PapoDataModule" and cfg.data.dataset_name == option
    for split, expected in DATA_SPLITS[option].items():
        node = cfg.data.get(f"{split}_dataset")
        if expected is None:
            assert node is None, f"{option}: no {split} split expected"
            continue
        target, source, hub_split, name, columns, keep = expected
        got = OmegaConf.to_container(node, resolve=True)
        assert (got["_target_"], got.get("source"), got["split"]) == (target, source, hub_split), (
            option,
            split,
        )
        assert (got.get("name"), got.get("columns"), got.get("keep_rows")) == (name, columns, keep), (
            option,
            split,
        )


def test_mathverse_keeps_only_the_multi_choice_items(tmp_path: Path) -> None:
    """data=mathverse loads testmini as the PAPO evaluation does: the free-form questions are dropped."""
    from datasets import Dataset
    from hydra.utils import instantiate

    from conftest import compose_cfg

    img = build_digits_split("val", 1, seed=0)[0]["images"][0]
    rows = {
        "image": [img] * 4,
        "query_wo": ["A? Choices: A:1 B:2", "How long?", "B? Choices: A:1 B:2", "How wide?"],
        "answer": ["A", "3", "B", "4"],
        "problem_version": ["Text Dominant", "Vision Only", "Vision Only", "Text Lite"],
        "question_type": ["multi-choice", "free-form", "multi-choice", "free-form"],
    }
    path = tmp_path / "mathverse_like.parquet"
    Dataset.from_dict(rows).to_parquet(str(path))
    cfg = compose_cfg(
        [
            "data=mathverse",
            f"data.test_dataset.source={path}",
            "data.test_dataset.name=null",
            "data.test_dataset.split=train",
        ]
    )
    ds = instantiate(cfg.data.test_dataset)()
    assert ds["problem"] == ["A? Choices: A:1 B:2", "B? Choices: A:1 B:2"]
    assert ds["task_type"] == ["Text Dominant", "Vision Only"] and ds["answer"] == ["A", "B"]


# ------------------------------------------------------------------------------------------ one RL step
@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS + EMBEDDED)
def test_experiment_runs_one_rl_step_on_stand_ins(name: str, make_cfg, tmp_path: Path, request) -> None:
    """Every experiment config runs one RL step (one rollout batch) here, with only what a CPU test needs
    changed; everything else (algorithm, loss, masking, model options, prompt template) is the config's own.

    - ``trainer=cpu`` is forced: the published runs ask for ``trainer=fsdp`` on 2-4 GPUs (``trainer=gpu`` for
      Qwen3-VL), and bf16 on GPUs; this machine has one CPU process (fp32). The embedded experiments already
      train on the CPU; forcing it keeps the test independent of the default trainer.
    - ``algo.dynamic_sampling.enabled=false``: DAPO / PAPO-D keep only groups with mixed outcomes, but the
      random-init stand-ins never solve a prompt, so every group would be filtered out and the run would stop
      after ``max_tries`` rollout batches without an update (the embedded experiments use GRPO, where it is
      off anyway). The filter is tested on its own: tests/test_algos_sampling.py, the refill in
      tests/test_module_training_paths.py, its resume in tests/test_resume.py.
    - Published experiments: model swapped for the tiny stand-in of the same architecture
      (``model.stand_in=tiny``) and the hub data for a local parquet file with the same columns; one rollout
      batch of 3 prompts = 3 optimiser steps (``algo.num_minibatches=3``).
    - Embedded experiments: the test suite's tiny sizes (64 train prompts, 4 per step, G=4, 8 new tokens, the
      shared 3-step warm start), one optimiser step.
    """
    from papo.pipeline import train

    if name in EMBEDDED:
        cfg, steps = compose_embedded_cfg(make_cfg, name, tmp_path), 1
    else:
        data_file = request.getfixturevalue("local_parquet")
        cfg, steps = compose_run_cfg(make_cfg, name, data_file, tmp_path, STAND_IN_EXTRA.get(name)), 3
    assert cfg.trainer.accelerator == "cpu" and cfg.algo.dynamic_sampling.enabled is False
    train(cfg)
    rec = json.loads((tmp_path / "sync" / "rank0.json").read_text())
    assert rec["global_step"] == steps  # one rollout batch = num_minibatches optimiser steps
    # weight decay is off: only a non-zero gradient of the loss can have moved the weights
    assert rec["start_digest"] != rec["end_digest"], "the loss's gradient must have moved the policy"


# ------------------------------------------------------------------------------------------ stand-ins
@pytest.mark.parametrize(
    ("family", "cls", "proc_cls"),
    [
        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor"),
        ("qwen3_vl", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor"),
    ],
)
def test_stand_ins_are_the_real_classes(family: str, cls: str, proc_cls: str, cache_dir: Path) -> None:
    from papo.models.loading import generation_suppress_token_ids, load_policy
    from papo.models.stand_in import ensure_stand_in
    from papo.rollout.inputs import chat_texts, encode_prompts

    path = ensure_stand_in(family, cache_dir / "models")
    model, proc = load_policy(path, gradient_checkpointing=True, freeze_vision_tower=True)
    assert type(model).__name__ == cls and type(proc).__name__ == proc_cls
    tok = proc.tokenizer
    suppressed = set(tok.convert_ids_to_tokens(generation_suppress_token_ids(proc)))
    assert "<|image_pad|>" in suppressed and "<|im_end|>" not in suppressed
    assert "<think>" not in suppressed  # an added token in Qwen3: must stay sampleable
    if family == "qwen3_vl":
        assert "<think>" in tok.get_added_vocab()
    img = build_digits_split("val", 1, seed=0)[0]["images"]
    from papo.data.images import load_images

    texts = chat_texts(proc, ["What is the sum?"], [1])
    assert texts[0].startswith("<|im_start|>") and texts[0].endswith("<|im_start|>assistant\n")
    enc = encode_prompts(proc, texts, [load_images(img)])
    assert "mm_token_type_ids" in enc and int(enc["mm_token_type_ids"].sum()) == 4  # 4 image tokens
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_uncached_hub_model_offline_says_how_to_allow_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub access is off unless PAPO_ALLOW_HUB=1 (papo.utils.run_env): a hub model that is not cached must say
    so, not only transformers' "We couldn't connect to 'https://huggingface.co'". Offline mode fails fast."""
    from papo.data.hub import HUB_OFFLINE_HINT, HubOfflineError
    from papo.models.loading import load_policy

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubOfflineError, match="PAPO_ALLOW_HUB=1") as info:
        load_policy("papo-tests/not-cached-anywhere")
    assert HUB_OFFLINE_HINT in str(info.value) and "papo-tests/not-cached-anywhere" in str(info.value)
    assert isinstance(info.value, OSError)  # the type transformers raised is still caught by OSError


# ------------------------------------------------------------------------------------------ LoRA
def test_lora_reference_is_the_base_model_with_adapters_disabled(cache_dir: Path) -> None:
    from papo.models.loading import is_lora, load_policy
    from papo.models.stand_in import ensure_stand_in
    from papo.rollout.inputs import chat_texts, encode_prompts

    path = ensure_stand_in("qwen3_vl", cache_dir / "models")
    lora = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": None, "vision": False}
    model, proc = load_policy(path, lora=lora)
    base, _ = load_policy(path)
    assert is_lora(model) and not is_lora(base)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any("visual" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # adapters that change the output
    from papo.data.images import load_images

    img = load_images(build_digits_split("val", 1, seed=0)[0]["images"])
    enc = encode_prompts(proc, chat_texts(proc, ["What?"], [1]), [img])
    with torch.no_grad():
        ref = base(**enc).logits
        with model.disable_adapter():
            disabled = model(**enc).logits
        adapted = model(**enc).logits
    torch.testing.assert_close(disabled, ref)
    assert not torch.allclose(adapted, ref)


@pytest.mark.slow
def test_lora_training_keeps_one_model_and_only_moves_adapters(
    local_parquet: str, make_cfg, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import spy_module
    from papo.pipeline import train

    cfg = compose_run_cfg(make_cfg, "grpo_3b", local_parquet, tmp_path, ["model.lora.rank=4"])
    captured = spy_module(monkeypatch)
    train(cfg)
    m = captured["module"]
    assert m.source.needs_ref and m.reference is None  # KL against the base model, no second copy
    changed = {
        k for k, v in m.policy.named_parameters() if not torch.equal(v.detach(), captured["before"][k])
    }
    assert changed and all("lora_" in k for k in changed)


# ------------------------------------------------------------------------------------------ missing packages
@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed")
def test_vllm_backend_without_vllm_is_a_clear_error(make_cfg) -> None:
    cfg = make_cfg(["rollout=vllm"])
    with pytest.raises(ConfigError, match=r"rollout=vllm needs vLLM.*pip install 'papo\[vllm\]'"):
        validate_config(cfg)
    from papo.rollout.vllm_backend import VLLMEngine

    with pytest.raises(ImportError, match="not installed"):
        VLLMEngine("any/model")


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
@pytest.mark.parametrize("trainer", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_without_deepspeed_is_a_clear_error(trainer: str, make_cfg) -> None:
    cfg = make_cfg([f"trainer={trainer}"])
    assert cfg.trainer.strategy.config.zero_optimization.stage == int(trainer[-1])
    with pytest.raises(ConfigError, match=r"deepspeed package is not installed.*papo\[deepspeed\]"):
        validate_config(cfg)


def _capture_strategy(**kwargs):
    return kwargs


@pytest.mark.parametrize("trainer", ["deepspeed_zero2", "deepspeed_zero3"])
def test_deepspeed_strategy_gets_a_plain_dict_config(trainer: str, make_cfg) -> None:
    """Lightning's DeepSpeedStrategy asserts ``isinstance(config, dict)``: an OmegaConf node fails there (it
    did, on a GPU, before the configs said ``_convert_: all``)."""
    import hydra

    cfg = make_cfg([f"trainer={trainer}"])
    node = OmegaConf.to_container(cfg.trainer.strategy, resolve=True)
    node["_target_"] = f"{__name__}._capture_strategy"
    kwargs = hydra.utils.instantiate(OmegaConf.create(node))
    assert type(kwargs["config"]) is dict
    assert type(kwargs["config"]["zero_optimization"]) is dict
    assert kwargs["config"]["gradient_clipping"] == cfg.optim.grad_clip


def test_sharded_trainer_configs_compose(make_cfg, cache_dir: Path) -> None:
    from papo.models.loading import load_policy
    from papo.models.stand_in import ensure_stand_in
    from papo.utils.distributed import SHARD_LAYER_CLASSES

    for name in ("ddp", "ddp_sim", "fsdp"):
        cfg = make_cfg([f"trainer={name}"])
        validate_config(cfg)
        assert cfg.trainer.use_distributed_sampler is False
    cfg = make_cfg(["trainer=fsdp", "trainer.devices=4", "trainer.num_nodes=2"])
    assert cfg.trainer.strategy._target_.endswith("ModelParallelStrategy")
    assert cfg.trainer.strategy.data_parallel_size == 8 and cfg.trainer.strategy.tensor_parallel_size == 1
    # FSDP2 finds blocks to shard (text decoder + vision tower) in both families
    for family in ("qwen2_5_vl", "qwen3_vl"):
        model, _ = load_policy(ensure_stand_in(family, cache_dir / "models"))
        names = {type(m).__name__ for m in model.modules()} & set(SHARD_LAYER_CLASSES)
        assert len(names) == 2, (family, names)

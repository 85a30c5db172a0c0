"""Export (papo.models.export, src/export.py): a checkpoint of a tiny training run written as a Hugging Face
folder loads with plain transformers and decodes greedily the same tokens as the checkpoint's policy does with
the project's rollout; LoRA merged or as an adapter; sharded (torch.distributed.checkpoint) checkpoints; errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from PIL import Image

from papo.models.export import ExportError, export_policy, find_checkpoint, load_policy_weights
from papo.models.loading import end_token_ids, generation_suppress_token_ids, load_policy, output_vocab_size
from papo.pipeline import resolve_model_dir
from papo.rollout.hf_generate import GenerationConfig, hf_generate
from papo.rollout.inputs import chat_texts, encode_prompts

ROOT = Path(__file__).resolve().parents[1]
NEW_TOKENS = 12


def _train(tmp: Path, cache_dir: Path, extra: list[str]) -> tuple[Path, dict]:
    from conftest import TINY_OVERRIDES, compose_cfg
    from papo.pipeline import train

    cfg = compose_cfg([*TINY_OVERRIDES, "logger=none", "trainer.max_steps=2", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(tmp)
        cfg.paths.cache_dir = str(cache_dir)
        cfg.model.cache_dir = str(cache_dir / "models")
    train(cfg)
    return tmp / "checkpoints" / "last.ckpt", OmegaConf.to_container(cfg.model, resolve=True)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache_dir):
    return _train(tmp_path_factory.mktemp("run_full"), cache_dir, [])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, cache_dir):
    return _train(tmp_path_factory.mktemp("run_lora"), cache_dir, ["+model.lora.rank=4", "optim.lr=1e-2"])


def _inputs(processor) -> dict:
    images = [[Image.new("RGB", (56, 56), (200, 30, 30))], [Image.new("RGB", (84, 56), (10, 120, 240))]]
    texts = chat_texts(processor, ["How many shapes?", "What colour is the image?"], [1, 1])
    return encode_prompts(processor, texts, images)


def _project_greedy(ckpt: Path, model_cfg: dict) -> torch.Tensor:
    """The checkpoint's policy decoded by the project's rollout (papo.rollout.hf_generate), greedy."""
    kwargs = {k: model_cfg[k] for k in ("min_pixels", "max_pixels", "lora") if model_cfg.get(k)}
    policy, processor = load_policy(resolve_model_dir(OmegaConf.create(model_cfg)), **kwargs)
    policy.load_state_dict(load_policy_weights(ckpt, "lightning"), strict=False)
    ids, _ = hf_generate(
        policy,
        _inputs(processor),
        GenerationConfig(max_new_tokens=NEW_TOKENS, temperature=0.0),
        end_token_ids(policy.generation_config, processor),
        processor.tokenizer.pad_token_id,
        generation_suppress_token_ids(processor, output_vocab_size(policy)),
    )
    return ids


def _exported_greedy(model, folder: Path) -> torch.Tensor:
    """Plain transformers: AutoProcessor + model.generate with the saved generation config."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, padding_side="left")
    inputs = _inputs(processor)
    out = model.generate(**inputs, do_sample=False, max_new_tokens=NEW_TOKENS)
    return out[:, inputs["input_ids"].shape[1] :]


def _same_tokens(project: torch.Tensor, exported: torch.Tensor, pad_id: int) -> None:
    assert exported.shape[1] > 0
    width = max(project.shape[1], exported.shape[1])
    pad = [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad_id) for t in (project, exported)]
    assert torch.equal(pad[0], pad[1]), (project, exported)


@pytest.mark.slow
def test_full_model_loads_with_transformers_and_decodes_the_same_tokens(full_run, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    ckpt, model_cfg = full_run
    out = export_policy(ckpt, tmp_path / "hf", model_cfg)
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"} <= files
    assert "chat_template.jinja" in files or "chat_template" in (out / "tokenizer_config.json").read_text()
    gen = json.loads((out / "generation_config.json").read_text())
    model = AutoModelForImageTextToText.from_pretrained(out)
    policy, processor = load_policy(resolve_model_dir(OmegaConf.create(model_cfg)))
    assert gen["eos_token_id"] == end_token_ids(policy.generation_config, processor)
    assert gen["suppress_tokens"] == generation_suppress_token_ids(processor, output_vocab_size(policy))

    # the exported weights are the checkpoint's policy weights (and not the untrained model's), no reference
    weights = load_policy_weights(ckpt, "lightning")
    saved = load_file(out / "model.safetensors")
    state = model.state_dict()
    # transformers writes its own key names (model.layers.*); one tensor per policy weight, no reference copy
    assert len(saved) <= len(weights) and not any("reference" in k for k in saved)
    assert weights.keys() - state.keys() <= {"lm_head.weight"}
    assert all(torch.equal(state[k], v) for k, v in weights.items() if k in state)
    base = policy.state_dict()
    assert any(not torch.equal(base[k], v) for k, v in weights.items())  # RL changed the policy

    project = _project_greedy(ckpt, model_cfg)
    _same_tokens(project, _exported_greedy(model, out), processor.tokenizer.pad_token_id)


@pytest.mark.slow
def test_sharded_dcp_checkpoint_is_consolidated(full_run, tmp_path):
    """A torch.distributed.checkpoint directory (trainer=fsdp's layout: the weights under ``state_dict``, the
    optimizer states beside them, Lightning's meta.pt) gives the same weights as the one-file checkpoint."""
    import torch.distributed.checkpoint as dcp

    ckpt, model_cfg = full_run
    full = torch.load(ckpt, map_location="cpu", weights_only=True)
    sharded = tmp_path / "last.ckpt"
    state = {"state_dict": full["state_dict"], "optimizer_0": {"step": torch.tensor(2.0)}}
    dcp.save(state, checkpoint_id=str(sharded), no_dist=True)
    torch.save({"global_step": full["global_step"]}, sharded / "meta.pt")
    assert find_checkpoint(tmp_path) == (sharded, "dcp")
    weights = load_policy_weights(sharded, "dcp")
    expected = load_policy_weights(ckpt, "lightning")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    out = export_policy(sharded, tmp_path / "hf", model_cfg)

    from transformers import AutoModelForImageTextToText

    state = AutoModelForImageTextToText.from_pretrained(out).state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items() if k in state)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["merge", "adapter"])
def test_lora_merged_or_adapter_decodes_the_same_tokens(lora_run, tmp_path, mode):
    from transformers import AutoModelForImageTextToText

    ckpt, model_cfg = lora_run
    out = export_policy(ckpt, tmp_path / "hf", model_cfg, lora=mode)
    weights = load_policy_weights(ckpt, "lightning")
    assert any(k.endswith("lora_B.default.weight") and v.abs().sum() > 0 for k, v in weights.items())
    if mode == "merge":
        model = AutoModelForImageTextToText.from_pretrained(out)
        state = model.state_dict()
        assert not any("lora" in k for k in state)
        # the adapters are in the weights: every adapted layer differs from its frozen base
        bases = {
            k.removeprefix("base_model.model.").replace(".base_layer", ""): v
            for k, v in weights.items()
            if k.endswith(".base_layer.weight")
        }
        assert bases and all(not torch.equal(state[k], v) for k, v in bases.items())
    else:
        from peft import PeftModel

        assert (out / "adapter_config.json").is_file() and (out / "base_model" / "config.json").is_file()
        base = AutoModelForImageTextToText.from_pretrained(out / "base_model")
        model = PeftModel.from_pretrained(base, out)
    project = _project_greedy(ckpt, model_cfg)
    _same_tokens(project, _exported_greedy(model, out), 0)


def test_errors_missing_checkpoint_existing_output_deepspeed(tmp_path):
    with pytest.raises(ExportError, match=r"ckpt_path=.*nope: no such file or directory"):
        find_checkpoint(tmp_path / "nope")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ExportError, match=r"not a checkpoint, and no \*\.ckpt in"):
        find_checkpoint(tmp_path / "run")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ExportError, match=r"out=.* exists; choose another folder or pass overwrite=true"):
        export_policy(tmp_path / "nope", out, {})
    ds = tmp_path / "ds.ckpt"
    (ds / "checkpoint").mkdir(parents=True)
    (ds / "latest").write_text("checkpoint")
    assert find_checkpoint(ds) == (ds, "deepspeed")
    try:
        import deepspeed  # noqa: F401
    except ImportError:
        with pytest.raises(ExportError, match="is a DeepSpeed checkpoint: consolidating it needs deepspeed"):
            load_policy_weights(ds, "deepspeed")
    with pytest.raises(ExportError, match=r"lora='both' is not one of \['merge', 'adapter'\]"):
        export_policy(tmp_path / "nope", tmp_path / "new", {}, lora="both")


def test_arguments_that_cannot_work_are_refused_before_anything_loads(tmp_path):
    """An unknown dtype and an ``out`` that cannot be written are one-line ExportErrors raised before the
    checkpoint or the model is read (they used to be a ValueError / FileNotFoundError traceback after it)."""
    with pytest.raises(ExportError, match=r"^dtype: unknown dtype 'bogus'; valid: \["):
        export_policy(tmp_path / "nope", tmp_path / "new", {}, dtype="bogus")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(ExportError, match=r"^out=.*a_file/hf: cannot write in .*a_file \("):
        export_policy(tmp_path / "nope", blocker / "hf", {})


def test_entry_point_help_and_bad_overrides_without_traceback(tmp_path):
    """``--help`` prints the usage and the keys (exit 0); an override Hydra refuses (an unknown key, an unknown
    model option) is one line on stderr with exit status 2, as every other bad argument."""
    run = [sys.executable, "src/export.py"]
    shown = subprocess.run([*run, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "ckpt_path" in shown.stdout and "overwrite" in shown.stdout, shown.stderr
    for override, line in (
        ("bogus=1", "Invalid export: Could not override 'bogus'. To append to your config use +bogus=1"),
        (
            "model=nope",
            "Invalid export: In 'export': Could not find 'model/nope' Available options in 'model':",
        ),
    ):
        proc = subprocess.run([*run, override], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert proc.stderr.strip().splitlines()[-1].startswith(line), proc.stderr[-500:]


@pytest.mark.slow
def test_checkpoint_of_another_model_is_one_line(full_run, tmp_path):
    """A checkpoint exported with another model's config (``model=small`` for a tiny run): an ExportError
    naming the first mismatched weight and what to pass, not torch's RuntimeError of every weight."""
    ckpt, model_cfg = full_run
    other = {**model_cfg, "size": "small"}
    with pytest.raises(
        ExportError, match=r"does not fit the model config \(size mismatch for .*model overrides"
    ):
        export_policy(ckpt, tmp_path / "hf", other)


@pytest.mark.slow
def test_entry_point_exports_and_refuses_an_existing_folder(full_run, tmp_path):
    ckpt, _ = full_run
    run = ckpt.parent.parent
    (run / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(OmegaConf.create({"model": full_run[1]}), run / ".hydra" / "config.yaml")
    cmd = [sys.executable, "src/export.py", f"ckpt_path={run}", f"out={tmp_path / 'hf'}"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"Invalid export: out={tmp_path / 'hf'} exists; choose another folder or pass overwrite=true to "
        "replace it"
    )
    third = subprocess.run([*cmd, "overwrite=true"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-2000:]


@pytest.mark.slow
def test_export_at_the_end_of_training(tmp_path, cache_dir):
    """callbacks=export: training ends with the HF folder written from the last checkpoint."""
    from transformers import AutoModelForImageTextToText

    ckpt, _ = _train(tmp_path, cache_dir, ["callbacks=[default,export]"])
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "hf_model")
    state = model.state_dict()
    weights = load_policy_weights(ckpt, "lightning")
    assert all(torch.equal(state[k], v) for k, v in weights.items() if k in state)


FSDP_SAVE = """
import os, sys
import torch.distributed as dist
import torch.multiprocessing as mp


def work(rank, path, model_dir, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from lightning.fabric.strategies.model_parallel import _distributed_checkpoint_save
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from papo.models.loading import load_policy

    policy, _ = load_policy(model_dir)
    fully_shard(policy, mesh=init_device_mesh("cpu", (2,)))
    state = get_model_state_dict(policy, options=StateDictOptions(full_state_dict=False))
    assert type(next(iter(state.values()))).__name__ == "DTensor"
    _distributed_checkpoint_save({"state_dict": {f"policy.{k}": v for k, v in state.items()}}, path)
    dist.destroy_process_group()


if __name__ == "__main__":
    mp.spawn(work, args=tuple(sys.argv[1:]), nprocs=2)
"""


@pytest.mark.slow
def test_fsdp2_shards_of_two_ranks_are_consolidated(full_run, tmp_path):
    """Two gloo ranks shard the model with FSDP2 (fully_shard) and save their DTensor shards with Lightning's
    own DCP save (ModelParallelStrategy's layout); the consolidated weights are the unsharded model's."""
    import os
    import socket

    _, model_cfg = full_run
    model_dir = resolve_model_dir(OmegaConf.create(model_cfg))
    script = tmp_path / "fsdp_save.py"
    script.write_text(FSDP_SAVE)
    ckpt = tmp_path / "last.ckpt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(ckpt), str(model_dir), port],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in ckpt.iterdir()) == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    weights = load_policy_weights(*find_checkpoint(ckpt))
    expected = load_policy(model_dir)[0].state_dict()
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)

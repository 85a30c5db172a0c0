"""Data parallelism through Lightning on CPU (gloo): the real multi-process path.

- ``python src/train.py trainer=ddp_sim`` runs 2 RL steps on 2 processes; both ranks must end with identical
  policy weights (papo.callbacks.rank_sync writes each rank's parameter hash), the weights must have moved
  (weight decay off, so only through the loss),
  and the train sampler must have given the ranks disjoint prompts (so groups never span ranks). The same
  run checks the token-mean normaliser's all-reduce (weights stay in sync without it): a spy callback
  (:class:`TokenCountSpy`) records each rank's mini-batch token count going into it, and the logged
  ``train/num_tokens_global`` must equal the sum of both ranks' counts on both ranks.
- The token-mean normaliser: with each rank dividing by (token count all-reduced over ranks) / world size,
  DDP's gradient average equals the gradient of ONE token mean over all ranks' tokens, even when the ranks
  hold different numbers of tokens (checked against a single-process computation).
- The whole update, as the published runs take it (several optimiser steps per rollout batch, each over several
  micro-batches; every loss term on): 2 DDP ranks end with the weights of one process that trains on the same
  rows (the ranks' rollout batches interleaved mini-batch by mini-batch), for both ``algo.loss_normalizer``
  values. The released per-micro-batch mean is equivalent only because each rank's micro-batches are
  micro-batches of the single process too; splitting the same mini-batches differently changes its update,
  and not the global token mean's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import Tensor

ROOT = Path(__file__).resolve().parents[1]


class TokenCountSpy(L.Callback):
    """Subprocess side of the DDP test: records what ``PapoModule._update`` reduces over the ranks with op ``sum``
    (this rank's mini-batch token count, and the global count returned) and the logged
    ``train/num_tokens_global``; writes ``tokens<rank>.json`` to ``output_dir`` at the end."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir, self.calls, self.logged = output_dir, [], []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        original = pl_module._reduce  # the strategy's reduction (trainer.strategy.reduce)

        def spy(value, op):
            out = original(value, op)
            if op == "sum":
                self.calls.append([float(value), float(out)])
            return out

        pl_module._reduce = spy  # the subprocess exits after fit: no need to restore

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        value = trainer.callback_metrics.get("train/num_tokens_global")
        self.logged.append(None if value is None else float(value))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(self.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = {"calls": self.calls, "logged": self.logged}
        (out / f"tokens{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_ddp_two_cpu_processes_two_rl_steps_identical_weights(tmp_path: Path, cache_dir: Path) -> None:
    out = tmp_path / "sync"
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "trainer=ddp_sim",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "warm_start=none",
        "callbacks=[rank_sync]",
        f"callbacks.rank_sync.output_dir={out}",
        "+callbacks.token_spy._target_=test_ddp.TokenCountSpy",
        f"+callbacks.token_spy.output_dir={out}",
        "logger=none",
        "validate_before=false",
        "validate_after=false",
        "data.batch_size=2",
        "data.train_dataset.size=16",
        "data.val_dataset.size=4",
        "data.test_dataset.size=4",
        "algo.group_size=2",
        "rollout.max_new_tokens=4",
        "optim.lr=1e-3",
        # no weight decay: only the loss (PAPO-G's perception KL here) can move the weights
        "optim.weight_decay=0",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    env = {
        **os.environ,
        "PAPO_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(_free_port()),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [2, 2]
    assert ranks[0]["start_digest"] == ranks[1]["start_digest"]
    assert ranks[0]["end_digest"] == ranks[1]["end_digest"], "ranks diverged"
    assert ranks[0]["end_digest"] != ranks[0]["start_digest"], "no gradient of the loss reached the weights"
    uids = [set(r["uids"]) for r in ranks]
    assert all(len(u) == 4 for u in uids), "2 steps x 2 prompts per rank"
    assert not uids[0] & uids[1], "the sampler must shard prompts: each group lives on one rank"
    # the token-mean normaliser: one all-reduce per mini-batch (1 per step here), the sum over both ranks
    tokens = [json.loads((out / f"tokens{r}.json").read_text()) for r in (0, 1)]
    assert [len(t["calls"]) for t in tokens] == [2, 2], "one token-count all-reduce per mini-batch"
    for step in range(2):
        (local0, global0), (local1, global1) = tokens[0]["calls"][step], tokens[1]["calls"][step]
        assert local0 > 0 and local1 > 0
        assert global0 == global1 == local0 + local1
        assert tokens[0]["logged"][step] == tokens[1]["logged"][step] == local0 + local1


class FixedRollout(L.Callback):
    """Replays one rollout batch per rank at every training step (the trainer's own first rollout, rewards set by
    a fixed pattern so every group has mixed outcomes, group ids made unique across ranks) and saves it to
    ``exp<rank>.pt``; with ``replay``, the saved batches of all ranks are loaded instead and interleaved chunk by
    chunk (``chunks`` = the number of mini-batches), so one process sees, mini-batch for mini-batch, the union of
    what the ranks saw. The gradient each optimiser step applies (after DDP's all-reduce and the clip) and the
    final policy weights go to ``grads.pt`` / ``weights.pt`` (AdamW's first steps move every weight by about lr
    whatever the gradient's scale, so the gradients are what tells two normalisers apart)."""

    def __init__(self, output_dir: str, replay: str | None = None, chunks: int = 2, ranks: int = 2) -> None:
        self.output_dir, self.replay, self.chunks, self.ranks = Path(output_dir), replay, chunks, ranks
        self._original = None
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        params = [p for p in pl_module.policy.parameters() if p.requires_grad]
        flat = [
            (p.grad if p.grad is not None else torch.zeros_like(p)).detach().flatten().cpu() for p in params
        ]
        self.grads.append(torch.cat(flat))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from papo.rollout.collect import Generator
        from papo.utils.checkpointing import experience_from_state, experience_state

        self._original = original = Generator.rollout
        rank, cb, state = trainer.global_rank, self, {}

        def load(path: Path):
            return experience_from_state(torch.load(path, weights_only=True))

        def rollout(gen, model, batch, cfg, reward_fn, **kwargs):
            if "exp" not in state:
                if cb.replay is None:
                    exp, _ = original(gen, model, batch, cfg, reward_fn, **kwargs)
                    pattern = (torch.arange(len(exp)) % 3 == 0).float()  # 1 of every 3 responses is right
                    exp.rewards = exp.accuracy = pattern
                    # responses of different lengths (1 to T tokens), so micro-batches hold different token
                    # counts and the two normalisers differ (the random-init policy never ends a response early)
                    T = exp.response_mask.shape[1]
                    lengths = 1 + (torch.arange(len(exp)) * 5 + 3 * rank) % T
                    exp.response_mask = (torch.arange(T)[None, :] < lengths[:, None]).float()
                    exp.group_ids = exp.group_ids + 1000 * rank
                    cb.output_dir.mkdir(parents=True, exist_ok=True)
                    torch.save(experience_state(exp), cb.output_dir / f"exp{rank}.pt")
                else:
                    from papo.rollout.experience import Experience

                    parts = [load(Path(cb.replay) / f"exp{r}.pt") for r in range(cb.ranks)]
                    n = len(parts[0]) // cb.chunks
                    exp = Experience.cat(
                        [p.select(list(range(c * n, (c + 1) * n))) for c in range(cb.chunks) for p in parts]
                    )
                state["exp"] = exp
            return state["exp"].select(list(range(len(state["exp"])))), 0

        Generator.rollout = rollout

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._original is not None:
            from papo.rollout.collect import Generator

            Generator.rollout = self._original

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            weights = {k: v.detach().cpu() for k, v in pl_module.policy.state_dict().items()}
            self.output_dir.mkdir(parents=True, exist_ok=True)
            torch.save(weights, self.output_dir / "weights.pt")
            torch.save(torch.stack(self.grads), self.output_dir / "grads.pt")


#: one rollout batch of 2 prompts x G = 4 per rank, 2 mini-batches of 2 micro-batches each, every loss term on
#: (policy gradient, reference KL, perception KL, both entropies), contiguous mini-batches
EQUIVALENCE_OVERRIDES = [
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "warm_start=none",
    "logger=none",
    "validate_before=false",
    "validate_after=false",
    "data.train_dataset.size=16",
    "data.val_dataset.size=4",
    "data.test_dataset.size=4",
    "data.batch_size=2",
    "algo=grpo",
    "loss=papo_d",
    "algo.group_size=4",
    "algo.num_minibatches=2",
    "algo.shuffle_minibatches=false",
    "rollout.max_new_tokens=6",
    "optim.lr=1e-3",
    "optim.grad_clip=1000",  # compare the raw gradients (a clip to norm 1 would hide their scale)
    "num_threads=1",
]


def _ddp_fixed_batch_run(out: Path, cache_dir: Path, normalizer: str) -> None:
    cmd = [
        sys.executable,
        str(ROOT / "src" / "train.py"),
        "trainer=ddp_sim",
        *EQUIVALENCE_OVERRIDES,
        f"algo.loss_normalizer={normalizer}",
        "algo.micro_batch_size=2",
        "callbacks=none",
        "+callbacks.fixed._target_=test_ddp.FixedRollout",
        f"+callbacks.fixed.output_dir={out}",
        f"hydra.run.dir={out / 'run'}",
    ]
    env = {
        **os.environ,
        "PAPO_CACHE_DIR": str(cache_dir),
        "WANDB_MODE": "offline",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "MASTER_PORT": str(_free_port()),
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]


def _single_process_run(
    make_cfg, out: Path, replay: Path, normalizer: str, micro: int
) -> tuple[dict, Tensor]:
    from omegaconf import open_dict

    from papo.pipeline import train

    cfg = make_cfg([*EQUIVALENCE_OVERRIDES, f"algo.loss_normalizer={normalizer}", f"algo.micro_batch_size={micro}",
                    "callbacks=none"], tiny=False)  # fmt: skip
    with open_dict(cfg):
        cfg.callbacks = {
            "fixed": {"_target_": "test_ddp.FixedRollout", "output_dir": str(out), "replay": str(replay)}
        }
    from papo.rollout.collect import Generator

    original = Generator.rollout
    try:
        train(cfg)
    finally:  # FixedRollout patches it; a run that fails before its teardown must not leave it to later tests
        Generator.rollout = original
    return _outputs(out)


def _outputs(out: Path) -> tuple[dict, Tensor]:
    return torch.load(out / "weights.pt", weights_only=True), torch.load(out / "grads.pt", weights_only=True)


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _rel(a: Tensor, b: Tensor) -> float:
    """Largest relative difference of the steps' gradients (one row per optimiser step)."""
    return float(((a - b).norm(dim=1) / b.norm(dim=1)).max())


@pytest.mark.slow
@pytest.mark.parametrize("normalizer", ["global_token_mean", "micro_batch_mean"])
def test_two_ranks_with_mini_and_micro_batches_equal_one_process(
    make_cfg, tmp_path: Path, cache_dir: Path, normalizer: str
) -> None:
    _ddp_fixed_batch_run(tmp_path / "ddp", cache_dir, normalizer)
    ddp_weights, ddp_grads = _outputs(tmp_path / "ddp")
    assert ddp_grads.shape[0] == 2 and bool((ddp_grads.norm(dim=1) > 0).all()), "two steps with a gradient"
    weights, grads = _single_process_run(make_cfg, tmp_path / "one", tmp_path / "ddp", normalizer, micro=2)
    assert _rel(grads, ddp_grads) < 1e-4, f"{normalizer}: the 2-rank gradients differ from one process's"
    assert _max_diff(weights, ddp_weights) < 1e-5
    # the same mini-batches split into micro-batches of 4 rows: the global token mean gives the same gradient;
    # the released per-micro-batch mean weights each token by the size of its micro-batch, so it changes
    _, other_grads = _single_process_run(make_cfg, tmp_path / "one4", tmp_path / "ddp", normalizer, micro=4)
    if normalizer == "global_token_mean":
        assert _rel(other_grads, ddp_grads) < 1e-4
    else:
        assert _rel(other_grads, ddp_grads) > 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _token_mean_worker(rank: int, world: int, port: int, queue) -> None:  # pragma: no cover - subprocess
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, inputs = _toy_problem(rank)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loss = _pg_loss(ddp, inputs, distributed=True)
        loss.backward()
        queue.put((rank, model.weight.grad.tolist()))  # plain lists: no shared-memory handles
        del ddp
        dist.barrier()  # both ranks are done with gloo before either leaves
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave without running C++ destructors: tearing a gloo group down while the peer's socket closes
    # aborts the process now and then ("terminate called without an active exception", exit -6), which
    # says nothing about the gradients this test checks. Exit 0 is reached only after the barrier.
    os._exit(0)


def _toy_problem(rank: int):
    """A linear 'policy' over token features; rank r holds a batch with a different token count."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    g = torch.Generator().manual_seed(100 + rank)
    B, T = 2, 5
    feats = torch.randn(B, T, 3, generator=g)
    mask = torch.zeros(B, T)
    lengths = [5, 1] if rank == 0 else [2, 3]  # 6 vs 5 tokens: unequal on purpose
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
    advantages = torch.randn(B, 1, generator=g).expand(B, T)
    old = torch.full((B, T), -0.7)
    return model, (feats, mask, advantages, old)


def _pg_loss(model, inputs, distributed: bool) -> torch.Tensor:
    from papo.losses.base import LossInputs
    from papo.losses.policy_gradient import PolicyGradientLoss

    feats, mask, adv, old = inputs
    logps = torch.nn.functional.logsigmoid(model(feats).squeeze(-1))  # (B, T)
    # what PapoModule._update passes: the mini-batch token count all-reduced over ranks, / world size
    num_tokens = float(mask.sum())
    if distributed:  # what trainer.strategy.reduce(..., "sum") does under DDP
        total = torch.tensor(num_tokens, dtype=torch.float64)
        torch.distributed.all_reduce(total)
        num_tokens = float(total) / torch.distributed.get_world_size()
    inp = LossInputs(logps, old, adv, mask, agg_mode="token-mean", num_tokens=num_tokens)
    loss, _ = PolicyGradientLoss("ppo_clip", 0.2, 0.28, 3.0)(inp)
    return loss


@pytest.mark.slow
def test_all_reduced_token_count_gives_the_global_token_mean_gradient() -> None:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    port = _free_port()
    procs = [ctx.Process(target=_token_mean_worker, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    grads = {r: torch.tensor(g) for r, g in (queue.get() for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    torch.testing.assert_close(grads[0], grads[1])  # DDP all-reduced them

    # one process, one token mean over BOTH ranks' tokens
    model, a = _toy_problem(0)
    _, b = _toy_problem(1)
    joint = tuple(torch.cat([x, y]) for x, y in zip(a, b, strict=True))
    _pg_loss(model, joint, distributed=False).backward()
    torch.testing.assert_close(grads[0], model.weight.grad)

    # the naive per-rank token mean (each rank its own count) would weight tokens unequally
    naive = []
    for rank in (0, 1):
        m, inputs = _toy_problem(rank)
        _pg_loss(m, inputs, distributed=False).backward()
        naive.append(m.weight.grad)
    assert not torch.allclose((naive[0] + naive[1]) / 2, model.weight.grad)

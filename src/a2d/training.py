"""Pieces the two recipes (train a model, distill a student) share; the loops themselves live in the recipes.

Checkpoints: ``RUN/best`` and ``RUN/last`` are ``save_pretrained`` folders (safetensors) with the
vocabulary and the run's ``config.yaml``; ``RUN/last/trainer/`` adds what ``--resume`` needs
(optimizer, scheduler, RNG, position in the data). Only the main process writes.
"""
from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from a2d.config import Config, save_config
from a2d.data.vocab import Vocabulary
from a2d.utils import UserError, atomic_dir, atomic_write_text


@dataclass
class TrainState:
    """Where a run is; saved with ``last/`` so that ``--resume`` continues exactly."""

    epoch: int = 1  # the epoch in progress (1-based)
    update: int = 0  # updates done
    batch_in_epoch: int = 0  # batches of this epoch already consumed (this process's shard)
    best_bleu: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best validation BLEU
    finished: bool = False


@dataclass
class RunResult:
    """What a recipe returns: where the run stopped and the trained model (unwrapped, last weights)."""

    state: TrainState
    model: torch.nn.Module
    stop_reason: str


def make_accelerator(cfg: Config) -> Accelerator:
    """Accelerate handles devices, data-parallel gradient sync and mixed precision.

    ``precision=auto`` takes bf16 on a GPU that supports it and full fp32 on a CPU.
    """
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    if precision != "no" and not torch.cuda.is_available():
        raise UserError(f"precision={precision}: mixed precision needs a GPU; use precision=no or auto on a CPU")
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def make_optimizer(cfg: Config, param_groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW (fairseq's Adam applies weight decay decoupled, as AdamW does)."""
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps,
                             weight_decay=cfg.weight_decay)


def inverse_sqrt_schedule(optimizer: torch.optim.Optimizer, cfg: Config) -> torch.optim.lr_scheduler.LambdaLR:
    """fairseq's ``inverse_sqrt``: linear warm-up from ``warmup_init_lr`` to ``lr``, then ``lr * sqrt(warmup / update)``.

    Expressed as a factor of each group's own peak learning rate, so an AAM with its own ``aam_lr`` follows
    the same shape.
    """
    warmup = max(cfg.warmup_updates, 1)
    init = cfg.warmup_init_lr / cfg.lr if cfg.lr > 0 else 0.0

    def factor(update: int) -> float:
        if update < warmup:
            return init + (1.0 - init) * update / warmup
        return math.sqrt(warmup / update)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    """The keyword arguments a Hugging Face seq2seq model takes from one of our batches."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")}


# --------------------------------------------------------------------------------------------- logging
class MetricsLog:
    """``RUN/metrics.jsonl``: one JSON object per line, ``type`` = ``train`` or ``valid``. Main process only."""

    def __init__(self, path: Path, enabled: bool, resume_update: int | None = None):
        self.path, self.enabled = path, enabled
        if enabled and resume_update is not None and path.exists():
            # Drop lines written after the checkpoint we resume from: they will be written again.
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("update", 0) <= resume_update]
            atomic_write_text(path, "".join(line + "\n" for line in kept))
        elif enabled and resume_update is None:
            path.unlink(missing_ok=True)

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


class Throughput:
    """Target tokens per second over the updates since the last call."""

    def __init__(self):
        self.tokens, self.start = 0, time.perf_counter()

    def add(self, ntokens: int) -> None:
        self.tokens += ntokens

    def rate(self) -> float:
        now = time.perf_counter()
        value = self.tokens / max(now - self.start, 1e-9)
        self.tokens, self.start = 0, now
        return value


# --------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def validation_loss(model, batches, data, collate, device, loss_fn) -> float:
    """Mean per-token loss of ``model`` over ``batches`` (this process's shard); summed across processes by the caller."""
    model.eval()
    total, tokens = 0.0, 0
    for idx in batches:
        batch = to_device(collate([data[i] for i in idx]), device)
        logits = model(**model_inputs(batch)).logits
        n = int(batch["ntokens"])
        total += float(loss_fn(logits, batch["labels"])) * n
        tokens += n
    model.train()
    return total, tokens


def validate(accelerator: Accelerator, model, vocab: Vocabulary, valid, cfg: Config) -> dict:
    """Validation loss (mean NLL per target token) and BLEU, each process doing its shard, gathered.

    ``valid`` is the validation :class:`~a2d.data.prepare.ParallelData`.
    """
    from accelerate.utils import gather_object

    from a2d.data.batching import collate, token_batches
    from a2d.evaluate import score, translate
    from a2d.losses import label_smoothed_ce

    rank, world = accelerator.process_index, accelerator.num_processes
    unwrapped = accelerator.unwrap_model(model)
    batches = token_batches(valid.src_lens, valid.tgt_lens, cfg.max_tokens, shuffle=False, seed=0, epoch=0)
    mine = batches[rank::world]
    total, tokens = validation_loss(unwrapped, mine, valid, collate, accelerator.device,
                                    lambda logits, labels: label_smoothed_ce(logits, labels, 0.0))
    sums = accelerator.reduce(torch.tensor([total, tokens], dtype=torch.float64, device=accelerator.device), "sum")
    n = len(valid) if not cfg.valid_max_sentences else min(cfg.valid_max_sentences, len(valid))
    indices = list(range(rank, n, world))
    hyps = translate(unwrapped, vocab, [valid.src_text[i] for i in indices], beam=cfg.valid_beam,
                     max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b)
    unwrapped.train()
    pairs = gather_object(list(zip(indices, hyps)))
    ordered = [h for _, h in sorted(pairs)]
    bleu = score(ordered, valid.tgt_text[:n], n_bootstrap=1)["bleu"] if accelerator.is_main_process else 0.0
    bleu = float(accelerator.reduce(torch.tensor([bleu], device=accelerator.device), "sum")[0])
    return {"valid_loss": float(sums[0] / sums[1].clamp(min=1)), "valid_bleu": bleu}


# --------------------------------------------------------------------------------------------- checkpoints
def save_model_dir(path: Path, model, vocab: Vocabulary, cfg: Config, extra_files: dict[str, str] | None = None,
                   trainer: dict | None = None) -> None:
    """Write a ``from_pretrained`` folder atomically: model (safetensors), vocabulary, ``config.yaml``.

    ``trainer`` (optimizer, scheduler and state) goes to ``trainer/`` for ``--resume``.
    """
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        vocab.save(tmp)
        save_config(cfg, tmp / "config.yaml")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
        if trainer is not None:
            (tmp / "trainer").mkdir()
            torch.save(trainer["optimizer"], tmp / "trainer" / "optimizer.pt")
            torch.save(trainer["scheduler"], tmp / "trainer" / "scheduler.pt")
            torch.save(trainer["rng"], tmp / "trainer" / "rng.pt")
            (tmp / "trainer" / "state.json").write_text(json.dumps(asdict(trainer["state"]), indent=2))
            for name, tensors in trainer.get("tensors", {}).items():
                save_file(tensors, tmp / "trainer" / f"{name}.safetensors")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_trainer(last: Path) -> dict:
    """Read ``last/trainer`` (``weights_only=True``: tensors and plain containers, never arbitrary pickle)."""
    folder = last / "trainer"
    if not (folder / "state.json").exists():
        raise UserError(f"{last}: no resumable checkpoint here (missing trainer/state.json)")
    out = {
        "optimizer": torch.load(folder / "optimizer.pt", weights_only=True),
        "scheduler": torch.load(folder / "scheduler.pt", weights_only=True),
        "rng": torch.load(folder / "rng.pt", weights_only=True),
        "state": TrainState(**json.loads((folder / "state.json").read_text())),
        "tensors": {p.stem: load_file(p) for p in folder.glob("*.safetensors")},
    }
    return out


def prepare_out_dir(out: Path, resume: bool) -> None:
    """A new run refuses to overwrite a finished or started run unless ``--resume`` is given."""
    if resume:
        if not (out / "last" / "trainer" / "state.json").exists():
            raise UserError(f"--resume: {out} has no last/ checkpoint to resume from")
        return
    if out.exists() and any(out.iterdir()):
        raise UserError(f"--out {out}: folder exists and is not empty (use --resume to continue it, "
                        "or choose another folder)")
    out.mkdir(parents=True, exist_ok=True)


def end_of_epoch(state: TrainState, cfg: Config, metrics: dict) -> bool:
    """Update the early-stopping record with this epoch's validation BLEU; return whether it is a new best."""
    improved = metrics["valid_bleu"] > state.best_bleu
    if improved:
        state.best_bleu, state.best_epoch, state.bad_epochs = metrics["valid_bleu"], state.epoch, 0
    else:
        state.bad_epochs += 1
    return improved


def should_stop(state: TrainState, cfg: Config) -> str | None:
    if cfg.max_steps and state.update >= cfg.max_steps:
        return f"reached max_steps={cfg.max_steps}"
    if state.epoch > cfg.max_epochs:
        return f"reached max_epochs={cfg.max_epochs}"
    if cfg.patience and state.bad_epochs >= cfg.patience:
        return f"no better validation BLEU for {cfg.patience} epochs (early stopping)"
    return None

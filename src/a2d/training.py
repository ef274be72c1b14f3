"""Pieces the two recipes (train a model, distill a student) share; the loops themselves live in the recipes.

Run folders (status, resume, checkpoints, the metrics log) are :mod:`a2d.rundir`'s.
"""
from __future__ import annotations

import math
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import gather_object

from a2d.config import Config
from a2d.data.batching import collate, token_batches
from a2d.data.vocab import Vocabulary
from a2d.errors import BadValue
from a2d.evaluate import score, translate
from a2d.losses import label_smoothed_ce
from a2d.rundir import BEST, LAST, METHOD_TENSORS, TrainState, set_rng_state
from a2d.tokenizer import collate_ids
from a2d.utils import UserError, peak_rss_bytes


@dataclass
class RunResult:
    """What a recipe returns: where the run stopped and the trained model (unwrapped, last weights)."""

    state: TrainState
    model: torch.nn.Module
    stop_reason: str


def make_accelerator(cfg: Config) -> Accelerator:
    """Accelerate handles devices, data-parallel gradient sync and mixed precision.

    ``precision=auto`` takes bf16 on a GPU that supports it and full fp32 on a CPU. ``precision=bf16`` on a
    CPU is an explicit choice (it changes the numbers): bf16 autocast through oneDNN, which needs a CPU with
    bf16 instructions (AVX512-BF16 or AMX). fp16 autocast needs a GPU. The process's memory allocator is left
    alone: the ``a2d`` command keeps large CPU tensors in the heap, a library caller opts in with
    :func:`a2d.allocator.keep_large_allocations`.
    """
    precision = resolve_precision(cfg.precision)
    # Accelerate keeps one precision per process; recipes run in turn in one process (a grid's teacher, then its
    # students) each take their own. The process group (PartialState) is kept.
    if AcceleratorState._shared_state.get("_mixed_precision", precision) != precision:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())


def resolve_precision(precision: str) -> str:
    """``precision`` as it runs here (``auto`` resolved), or a :class:`UserError` where this device cannot run it."""
    gpu = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"
    if precision == "fp16" and not gpu:
        raise UserError("precision=fp16: fp16 mixed precision needs a GPU; use precision=no, auto, or bf16 on a CPU "
                        "with bf16 instructions")
    if precision == "bf16" and not gpu and not cpu_bf16_supported():
        raise UserError("precision=bf16: this CPU has no bf16 instructions (AVX512-BF16 or AMX); use precision=no "
                        "or auto")
    return precision


def cpu_bf16_supported() -> bool:
    """Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX), where bf16 autocast pays."""
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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


def check_data_fits(cfg: Config, data_dir, splits: dict, positions: dict[str, int] | None = None) -> None:
    """Refuse, before anything is written, settings the data cannot be trained with.

    ``splits`` maps a split name to its :class:`~a2d.data.prepare.ParallelData`; ``positions`` maps a model's
    setting (``"max_positions"``, ``"the teacher's max_position_embeddings"``) to the sequence length it accepts. An
    example takes ``max(src, tgt) + 1`` tokens (``</s>`` or ``<s>`` added) of both the batch budget and the
    positions.
    """
    positions = positions or {"max_positions": cfg.max_positions}
    for name, data in splits.items():
        if not len(data):
            continue
        longest = int(max(data.src_lens.max(), data.tgt_lens.max())) + 1
        if name == "train" and longest > cfg.max_tokens:
            raise UserError(f"max_tokens={cfg.max_tokens} is smaller than the longest training example of {data_dir} "
                            f"({longest} tokens); raise max_tokens")
        for what, limit in positions.items():
            if longest > limit:
                fix = "raise max_positions, or " if what == "max_positions" else ""
                raise BadValue("data_dir", data_dir, f"its longest {name} example has {longest} tokens with </s>, "
                               f"more than {what}={limit}; {fix}prepare the data with {{max_len}}",
                               max_len=limit - 1)


def start_run(accelerator: Accelerator, run, resume: bool, cfg: Config, vocab, log) -> bool:
    """Ready the run folder on the main process (:meth:`a2d.rundir.RunDir.begin`) and tell every process
    whether a checkpoint is resumed; a resumed one must fit ``cfg`` and ``vocab``."""
    from accelerate.utils import broadcast_object_list

    resumed = [run.begin(resume, log) if accelerator.is_main_process else False]
    if accelerator.num_processes > 1:
        broadcast_object_list(resumed)
    if resumed[0]:
        run.check_resumable(cfg, vocab)
    accelerator.wait_for_everyone()
    return resumed[0]


def micro_batches(batches: list[list[int]], update_freq: int) -> list[list[list[int]]]:
    """Consecutive groups of ``update_freq`` batches, one group per update (the last may be smaller)."""
    return [batches[i:i + update_freq] for i in range(0, len(batches), update_freq)]


def resume_trainer(accelerator: Accelerator, run, optimizer: torch.optim.Optimizer, scheduler, method=None,
                   log=print) -> TrainState:
    """Load ``run``'s ``last/trainer`` into the optimizer, the schedule, the method's modules (when it has some) and
    this process's RNG; return where the run is."""
    ckpt = run.load_trainer(accelerator.process_index, accelerator.num_processes, log)
    if method is not None and METHOD_TENSORS in ckpt["tensors"]:
        method.load_state_dict(ckpt["tensors"][METHOD_TENSORS])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    state = ckpt["state"]
    log(f"resuming {run.path} at epoch {state.epoch}, update {state.update}")
    return state


def apply_update(optimizer: torch.optim.Optimizer, scheduler, state: TrainState, batches: int) -> None:
    """The update itself, after its batches' backward passes: an optimizer and a schedule step, the gradients
    cleared, and the run's position (``state.update``, ``state.batch_in_epoch``: ``batches`` more) advanced."""
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    state.update += 1
    state.batch_in_epoch += batches


def check_finite(accelerator: Accelerator, update: int, values: dict[str, torch.Tensor]) -> None:
    """Stop with one line naming the update and the term when a loss is NaN or infinite (on any process).

    Called before the backward pass, so no update is made and ``last/`` keeps the last good weights.
    """
    flags = torch.stack([torch.isfinite(v.detach().float()).all() for v in values.values()]).float()
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(flags.to(accelerator.device), "min")
    if bool(flags.all()):
        return
    bad = [name for name, ok in zip(values, flags.tolist()) if not ok]
    raise UserError(f"update {update}: the loss term {', '.join(bad)} is not finite (NaN or inf); stopped "
                    "before applying it, last/ holds the last good checkpoint (lower lr, set clip_norm, or "
                    "check the data)")


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_inputs(batch: dict) -> dict:
    """The keyword arguments a Hugging Face seq2seq model takes from one of our batches."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")}


# --------------------------------------------------------------------------------------------- logging
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


class RunProgress:
    """What the user sees while a run trains, besides the metrics lines: the progress bar's loss and tokens/s from
    the first update (refreshed at most once per ``interval`` seconds, so the loss's ``.item()`` does not sync a
    GPU every update), and one line once the first ``first`` updates are done: the rate, the time an epoch will
    take at that rate, and the peak memory so far."""

    def __init__(self, main: bool, log, tokens_per_epoch: int, device: torch.device, first: int = 10,
                 interval: float | None = None):
        self.main, self.log, self.tokens_per_epoch, self.device = main, log, tokens_per_epoch, device
        self.first, self.interval = first, interval if interval is not None else (1.0 if sys.stderr.isatty() else 60.0)
        self.updates, self.tokens, self.start, self.shown = 0, 0, time.perf_counter(), -math.inf

    def starting(self, batches: int, updates: int) -> None:
        if self.main:
            self.log(f"an epoch: {self.tokens_per_epoch:,} target tokens in {batches:,} batches ({updates:,} updates); "
                     f"memory now {peak_memory(self.device)}")

    def update(self, bar, ntokens: int, terms: dict[str, torch.Tensor]) -> None:
        """After each update (``ntokens``: the target tokens it trained on, all processes)."""
        self.updates += 1
        self.tokens += ntokens
        now = time.perf_counter()
        rate = self.tokens / max(now - self.start, 1e-9)
        if self.main and self.updates == self.first:
            minutes = self.tokens_per_epoch / max(rate, 1e-9) / 60
            self.log(f"first {self.first} updates: {rate:,.0f} target tokens/s, about {minutes:,.1f} min per epoch; "
                     f"peak memory {peak_memory(self.device)}")
        if self.main and now - self.shown >= self.interval:
            self.shown = now
            bar.set_postfix({k: f"{v.item():.3f}" for k, v in terms.items() if k in ("loss", "ce")}
                            | {"tok_s": f"{rate:,.0f}"}, refresh=False)


def peak_memory(device: torch.device) -> str:
    """The process's peak resident memory (CPU) or the device's peak allocated memory (CUDA), as text."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB on {device}"
    return f"{peak_rss_bytes() / 2**30:.2f} GiB resident"


# --------------------------------------------------------------------------------------------- interruption
class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT/SIGTERM after saving ``last/``: ``--resume`` continues it."""


class SavePoints:
    """When the loop saves ``last/`` between epoch ends, and whether it must stop: every ``save_every`` updates,
    every ``save_every_minutes``, and at the first SIGINT or SIGTERM (Ctrl-C, a scheduler's kill) — the update under
    way finishes, ``last/`` is saved, and :class:`Interrupted` is raised, so that ``--resume`` continues the run
    bit for bit; a second signal interrupts at once. Use as a context manager around the loop: it sets the
    handlers (from the main thread only; elsewhere only the timed and counted saves apply) and restores the old
    ones. Under several processes they decide together (an all-reduce per update), since saving gathers from all."""

    def __init__(self, cfg: Config, accelerator: Accelerator, run):
        self.cfg, self.accelerator, self.run = cfg, accelerator, run
        self.signal: str | None = None
        self.last_save = time.monotonic()
        self._old: dict = {}

    def __enter__(self) -> "SavePoints":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:  # the second signal: no more waiting
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name

    def after_update(self, update: int, save_last, bar) -> None:
        """After update number ``update``: ``save_last()`` when a save is due; after a signal, close the progress
        ``bar`` and raise :class:`Interrupted`."""
        save, stop = self.due(update)
        if save:
            save_last()
        if stop:
            bar.close()
            raise Interrupted(f"{self.signal or 'a signal'} at update {update}; {self.run.last} is saved: the same "
                              "command with --resume continues the run")

    def due(self, update: int) -> tuple[bool, bool]:
        """``(save last/ now, then stop)`` after update number ``update``."""
        cfg = self.cfg
        timed = bool(cfg.save_every_minutes) and time.monotonic() - self.last_save >= 60 * cfg.save_every_minutes
        stop = self.signal is not None
        if self.accelerator.num_processes > 1:
            flags = torch.tensor([float(timed), float(stop)], device=self.accelerator.device)
            flags = self.accelerator.reduce(flags, "sum")
            timed, stop = bool(flags[0] > 0), bool(flags[1] > 0)
        save = stop or timed or bool(cfg.save_every and update % cfg.save_every == 0)
        if save:
            self.last_save = time.monotonic()
        return save, stop


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
    rank, world = accelerator.process_index, accelerator.num_processes
    unwrapped = accelerator.unwrap_model(model)
    batches = token_batches(valid.src_lens, valid.tgt_lens, cfg.max_tokens, shuffle=False, seed=0, epoch=0)
    mine = batches[rank::world]
    total, tokens = validation_loss(unwrapped, mine, valid, partial(collate, **collate_ids(vocab)), accelerator.device,
                                    lambda logits, labels: label_smoothed_ce(logits, labels, 0.0))
    sums = accelerator.reduce(torch.tensor([total, tokens], dtype=torch.float64, device=accelerator.device), "sum")
    n = len(valid) if not cfg.valid_max_sentences else min(cfg.valid_max_sentences, len(valid))
    indices = list(range(rank, n, world))
    hyps = translate(unwrapped, vocab, [valid.src_text[i] for i in indices], beam=cfg.valid_beam,
                     max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b)
    unwrapped.train()
    pairs = gather_object(list(zip(indices, hyps)))
    ordered = [h for _, h in sorted(pairs)]
    bleu = score(ordered, valid.tgt_text[:n], n_bootstrap=1, tgt_lang=valid.meta.get("tgt"))["bleu"] if accelerator.is_main_process else 0.0
    bleu = float(accelerator.reduce(torch.tensor([bleu], device=accelerator.device), "sum")[0])
    return {"valid_loss": float(sums[0] / sums[1].clamp(min=1)), "valid_bleu": bleu}


# --------------------------------------------------------------------------------------------- stopping
@dataclass
class Validation:
    """How a recipe validates: ``run()`` gives the metrics (gathered across processes), ``score`` names the one
    that chooses ``best/`` (higher is better: BLEU, a task's metric, minus a perplexity), ``describe(result)``
    words them for the log line."""

    run: Callable[[], dict]
    score: str = "valid_bleu"
    describe: Callable[[dict], str] = lambda r: f"valid loss {r['valid_loss']:.3f}, valid BLEU {r['valid_bleu']:.2f}"


def translation_validation(accelerator: Accelerator, model, vocab: Vocabulary, valid, cfg: Config) -> Validation:
    """The translation recipes' validation: :func:`validate` (loss and BLEU), best on BLEU."""
    return Validation(lambda: validate(accelerator, model, vocab, valid, cfg))


def end_of_epoch(state: TrainState, score: float, epoch_done: bool = True) -> bool:
    """Update the early-stopping record with a validation's score (higher is better); return whether it is a new
    best (the first validation always is: ``best_epoch`` 0 means none yet, whatever the score's sign).

    ``epoch_done=False`` (the validation at the update that spends ``max_steps``, mid-epoch) may set a new
    best but does not count as an epoch for ``patience``.
    """
    improved = state.best_epoch == 0 or score > state.best_bleu
    if improved:
        state.best_bleu, state.best_epoch, state.bad_epochs = score, state.epoch, 0
    elif epoch_done:
        state.bad_epochs += 1
    return improved


def budget_spent(state: TrainState, cfg: Config) -> bool:
    """Whether ``max_steps`` (when set) is reached."""
    return bool(cfg.max_steps) and state.update >= cfg.max_steps


def record_validation(accelerator: Accelerator, validation: Validation, state: TrainState, metrics, log,
                      epoch_done: bool) -> bool:
    """Validate, update the record (:func:`end_of_epoch`), write the metrics line and say it.

    Called at every epoch's end and at the update that spends ``max_steps`` (``epoch_done=False`` when that
    update is mid-epoch), so that ``best/`` always holds validated weights. Returns whether the caller
    should save ``best/``.
    """
    result = validation.run()
    improved = end_of_epoch(state, result[validation.score], epoch_done)
    metrics.write(type="valid", update=state.update, epoch=state.epoch, **result)
    if accelerator.is_main_process:
        where = f"epoch {state.epoch}" if epoch_done else f"epoch {state.epoch} (in progress, max_steps reached)"
        log(f"{where}: update {state.update}, {validation.describe(result)}" + (" (best)" if improved else ""))
    return improved


def end_of_pass(accelerator: Accelerator, validation: Validation, cfg: Config, state: TrainState, metrics, log, save,
                epoch_done: bool) -> tuple[str | None, int | None]:
    """What follows a pass over an epoch's batches, whole (``epoch_done``) or cut short by ``max_steps``: validate (at
    an epoch's end, and at the update that spends ``max_steps``) and ``save(BEST)`` on a new best, go to the next
    epoch, decide whether to stop, ``save(LAST)``. Returns why the run stops (None: it goes on) and the update it
    validated (None: none)."""
    validated = None
    if epoch_done or budget_spent(state, cfg):
        if record_validation(accelerator, validation, state, metrics, log, epoch_done):
            save(BEST)
        validated = state.update
    return next_pass(state, cfg, save, epoch_done), validated


def next_pass(state: TrainState, cfg: Config, save, epoch_done: bool) -> str | None:
    """After a pass and its validation: go to the next epoch (``epoch_done``), decide whether to stop, ``save(LAST)``;
    returns why the run stops (None: it goes on)."""
    if epoch_done:
        state.epoch += 1
        state.batch_in_epoch = 0
    stop = should_stop(state, cfg)
    state.finished = stop is not None
    save(LAST)
    return stop


def validate_the_end(accelerator: Accelerator, validation: Validation, state: TrainState, metrics, log, save,
                     validated: int | None) -> None:
    """A run resumed from a ``last/`` written (``save_every``, ``save_every_minutes``, a signal) at the update that
    ends it, before its validation: validate it now, so that ``best/`` holds validated weights, and mark it
    finished."""
    if validated != state.update and (not state.finished or state.best_epoch == 0):
        if record_validation(accelerator, validation, state, metrics, log, epoch_done=False):
            save(BEST)
        state.finished = True
        save(LAST)


def should_stop(state: TrainState, cfg: Config) -> str | None:
    if budget_spent(state, cfg):
        return f"reached max_steps={cfg.max_steps}"
    if state.epoch > cfg.max_epochs:
        return f"reached max_epochs={cfg.max_epochs}"
    if cfg.patience and state.bad_epochs >= cfg.patience:
        return f"no better validation score (BLEU, or the task's metric) for {cfg.patience} epochs (early stopping)"
    return None

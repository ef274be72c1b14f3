"""Recipe: train a translation Transformer (a teacher, or a student without KD) with label-smoothed cross-entropy.

Read top to bottom: set up (data, model, optimizer), maybe resume, then the loop — batches bucketed by
length under a token budget, one update per ``update_freq`` batches, a metrics line every ``log_every``
updates, validation loss and BLEU after every epoch, ``best/`` and ``last/`` checkpoints, early stopping.

Runs unchanged on one CPU, one GPU, or data-parallel under ``accelerate launch`` / ``torchrun``:
each process takes its shard of the batches, Accelerate averages gradients, the main process writes.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from a2d.config import Config, save_config
from a2d.data.batching import collate, shard_batches, token_batches
from a2d.data.prepare import ParallelData, load_meta
from a2d.data.vocab import Vocabulary
from a2d.losses import label_smoothed_ce
from a2d.models import build_model, count_parameters, load_weights
from a2d.rundir import LAST, RunDir, TrainState, rng_state
from a2d.tokenizer import collate_ids
from a2d.training import (RunProgress, RunResult, SavePoints, Throughput, apply_update, check_data_fits, check_finite,
                          end_of_pass, inverse_sqrt_schedule, make_accelerator, make_optimizer, micro_batches,
                          model_inputs, resume_trainer, should_stop, start_run, to_device, translation_validation,
                          validate_the_end)


def train_step(model, batch: dict, cfg: Config, autocast=contextlib.nullcontext) -> dict[str, torch.Tensor]:
    """One batch's loss terms: ``{"loss": L_CE, "ce": L_CE}`` (fp32, mean per target token)."""
    with autocast():
        logits = model(**model_inputs(batch)).logits
    ce = label_smoothed_ce(logits, batch["labels"], cfg.label_smoothing)
    return {"loss": ce, "ce": ce}


def train(cfg: Config, data_dir: Path, out: Path, resume: bool = False, log=print) -> RunResult:
    data_dir, run = Path(data_dir), RunDir(out)
    cfg = cfg.without_method()  # no distillation: the saved config.yaml has no method settings
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process

    # ---- data and model; every setting is checked against the data before the run folder is touched
    load_meta(data_dir)  # a clear error if data_dir is not a prepared directory
    vocab = Vocabulary.load(data_dir)
    train_data, valid_data = ParallelData.load(data_dir, "train"), ParallelData.load(data_dir, "valid")
    check_data_fits(cfg, data_dir, {"train": train_data, "valid": valid_data})
    resumed = start_run(accelerator, run, resume, cfg, vocab, log)
    model = build_model(cfg, len(vocab), seed=cfg.seed, layout=vocab.layout)  # a brought tokenizer's ids
    optimizer = make_optimizer(cfg, [{"params": [p for p in model.parameters() if p.requires_grad]}])
    scheduler = inverse_sqrt_schedule(optimizer, cfg)
    state = TrainState()
    if resumed:
        load_weights(model, run.last)
        state = resume_trainer(accelerator, run, optimizer, scheduler, log=log)
    elif main:
        save_config(cfg, run.config_file)
    model, optimizer = accelerator.prepare(model, optimizer)
    metrics = run.metrics_log(main, state if resumed else None)
    if main:
        log(f"model: {count_parameters(accelerator.unwrap_model(model)):,} parameters; "
            f"train {len(train_data):,} / valid {len(valid_data):,} sentence pairs; "
            f"{accelerator.num_processes} process(es) on {accelerator.device}")

    def save(which: str) -> None:
        trainer = None
        if which == LAST:  # every process's RNG state, so that each resumes its own dropout stream
            rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
            trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "rng": rngs, "state": state}
        if main:
            run.save(which, accelerator.unwrap_model(model), vocab, cfg, trainer=trainer)

    # ---- the loop (Ctrl-C or SIGTERM: last/ is saved at the end of the update under way, then Interrupted)
    model.train()
    speed = Throughput()
    progress_line = RunProgress(main, log, int(train_data.tgt_lens.sum()) + len(train_data), accelerator.device)
    savepoints = SavePoints(cfg, accelerator, run)
    stop = should_stop(state, cfg)
    validated = None  # the update of this process's last validation
    validation = translation_validation(accelerator, model, vocab, valid_data, cfg)
    with savepoints:
        while stop is None:
            batches = token_batches(train_data.src_lens, train_data.tgt_lens, cfg.max_tokens, shuffle=True,
                                    seed=cfg.seed, epoch=state.epoch)
            batches = shard_batches(batches, accelerator.process_index, accelerator.num_processes)
            bar = tqdm(total=len(batches), initial=state.batch_in_epoch, desc=f"epoch {state.epoch}",
                       disable=not main, leave=False, dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 60.0)
            if progress_line.updates == 0:
                progress_line.starting(len(batches), len(micro_batches(batches, cfg.update_freq)))
            for group in micro_batches(batches[state.batch_in_epoch:], cfg.update_freq):
                ntokens = 0
                for i, idx in enumerate(group):
                    batch = to_device(collate([train_data[j] for j in idx], **collate_ids(vocab)), accelerator.device)
                    last_micro = i == len(group) - 1
                    with contextlib.nullcontext() if last_micro else accelerator.no_sync(model):
                        terms = train_step(model, batch, cfg, accelerator.autocast)
                        check_finite(accelerator, state.update + 1, terms)
                        accelerator.backward(terms["loss"] / len(group))
                    ntokens += int(batch["ntokens"])
                if cfg.clip_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_norm)
                apply_update(optimizer, scheduler, state, len(group))
                speed.add(ntokens * accelerator.num_processes)
                bar.update(len(group))
                progress_line.update(bar, ntokens * accelerator.num_processes, terms)
                if state.update % cfg.log_every == 0:
                    lr, tps = scheduler.get_last_lr()[0], speed.rate()
                    loss = terms["loss"].item()
                    metrics.write(type="train", update=state.update, epoch=state.epoch, loss=loss, ce=loss, lr=lr,
                                  tokens_per_s=tps)
                savepoints.after_update(state.update, lambda: save(LAST), bar)  # Interrupted after a signal
                if cfg.max_steps and state.update >= cfg.max_steps:
                    break
            bar.close()
            # validation at the epoch's end (or at max_steps), best/, the next epoch, whether to stop, last/
            stop, checked = end_of_pass(accelerator, validation, cfg, state, metrics, log, save,
                                        epoch_done=state.batch_in_epoch >= len(batches))
            validated = validated if checked is None else checked
    validate_the_end(accelerator, validation, state, metrics, log, save, validated)
    accelerator.wait_for_everyone()
    if main:
        log(f"stopped: {stop}; best valid BLEU {state.best_bleu:.2f} at epoch {state.best_epoch}")
    return RunResult(state, accelerator.unwrap_model(model), stop)


__all__ = ["train", "train_step"]

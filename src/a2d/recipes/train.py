"""Recipe: train a translation Transformer (a teacher, or a student without KD) with label-smoothed cross-entropy.

Read top to bottom: set up (data, model, optimizer), maybe resume, then the loop — batches bucketed by
length under a token budget, one update per batch, a metrics line every ``log_every`` updates,
validation loss and BLEU after every epoch, ``best/`` and ``last/`` checkpoints, early stopping.

Runs unchanged on one CPU, one GPU, or data-parallel under ``accelerate launch`` / ``torchrun``:
each process takes its shard of the batches, Accelerate averages gradients, the main process writes.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tqdm.auto import tqdm

from a2d.config import Config, save_config
from a2d.data.batching import collate, shard_batches, token_batches
from a2d.data.prepare import ParallelData, load_meta
from a2d.data.vocab import Vocabulary
from a2d.losses import label_smoothed_ce
from a2d.models import build_model, count_parameters, load_weights
from a2d.training import (MetricsLog, RunResult, Throughput, TrainState, end_of_epoch, inverse_sqrt_schedule, load_trainer,
                          make_accelerator, make_optimizer, model_inputs, prepare_out_dir, rng_state,
                          save_model_dir, set_rng_state, should_stop, to_device, validate)


def train(cfg: Config, data_dir: Path, out: Path, resume: bool = False, log=print) -> RunResult:
    data_dir, out = Path(data_dir), Path(out)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process

    # ---- data and model
    load_meta(data_dir)  # a clear error if --data is not a prepared directory
    vocab = Vocabulary.load(data_dir)
    train_data, valid_data = ParallelData.load(data_dir, "train"), ParallelData.load(data_dir, "valid")
    if main:
        prepare_out_dir(out, resume)
    accelerator.wait_for_everyone()
    model = build_model(cfg, len(vocab), seed=cfg.seed)
    optimizer = make_optimizer(cfg, [{"params": [p for p in model.parameters() if p.requires_grad]}])
    scheduler = inverse_sqrt_schedule(optimizer, cfg)
    state = TrainState()
    if resume:
        load_weights(model, out / "last")
        ckpt = load_trainer(out / "last")
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        log(f"resuming {out} at epoch {state.epoch}, update {state.update}")
    elif main:
        save_config(cfg, out / "config.yaml")
    model, optimizer = accelerator.prepare(model, optimizer)
    metrics = MetricsLog(out / "metrics.jsonl", main, resume_update=state.update if resume else None)
    if main:
        log(f"model: {count_parameters(accelerator.unwrap_model(model)):,} parameters; "
            f"train {len(train_data):,} / valid {len(valid_data):,} sentence pairs; "
            f"{accelerator.num_processes} process(es) on {accelerator.device}")

    def save(path: Path, with_trainer: bool) -> None:
        trainer = None
        if with_trainer:
            trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "rng": rng_state(), "state": state}
        if main:
            save_model_dir(path, accelerator.unwrap_model(model), vocab, cfg, trainer=trainer)

    # ---- the loop
    model.train()
    speed = Throughput()
    stop = should_stop(state, cfg)
    while stop is None:
        batches = token_batches(train_data.src_lens, train_data.tgt_lens, cfg.max_tokens, shuffle=True,
                                seed=cfg.seed, epoch=state.epoch)
        batches = shard_batches(batches, accelerator.process_index, accelerator.num_processes)
        bar = tqdm(total=len(batches), initial=state.batch_in_epoch, desc=f"epoch {state.epoch}",
                   disable=not main, leave=False, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 60.0)
        for idx in batches[state.batch_in_epoch:]:
            batch = to_device(collate([train_data[i] for i in idx]), accelerator.device)
            with accelerator.autocast():
                logits = model(**model_inputs(batch)).logits
            loss = label_smoothed_ce(logits, batch["labels"], cfg.label_smoothing)  # L_CE, fp32
            accelerator.backward(loss)
            if cfg.clip_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.update += 1
            state.batch_in_epoch += 1
            speed.add(int(batch["ntokens"]) * accelerator.num_processes)
            bar.update(1)
            if state.update % cfg.log_every == 0:
                lr, tps = scheduler.get_last_lr()[0], speed.rate()
                bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
                metrics.write(type="train", update=state.update, epoch=state.epoch, loss=loss.item(),
                              ce=loss.item(), lr=lr, tokens_per_s=tps)
            if cfg.save_every and state.update % cfg.save_every == 0:
                save(out / "last", with_trainer=True)
            if cfg.max_steps and state.update >= cfg.max_steps:
                break
        bar.close()
        epoch_done = state.batch_in_epoch >= len(batches)
        if epoch_done:
            result = validate(accelerator, model, vocab, valid_data, cfg)
            improved = end_of_epoch(state, cfg, result)
            metrics.write(type="valid", update=state.update, epoch=state.epoch, **result)
            if main:
                log(f"epoch {state.epoch}: update {state.update}, valid loss {result['valid_loss']:.3f}, "
                    f"valid BLEU {result['valid_bleu']:.2f}" + (" (best)" if improved else ""))
            if improved:
                save(out / "best", with_trainer=False)
            state.epoch += 1
            state.batch_in_epoch = 0
        stop = should_stop(state, cfg)
        state.finished = stop is not None
        save(out / "last", with_trainer=True)
    if main and not (out / "best").exists():
        save(out / "best", with_trainer=False)  # stopped before the first epoch ended: last weights
    accelerator.wait_for_everyone()
    if main:
        log(f"stopped: {stop}; best valid BLEU {state.best_bleu:.2f} at epoch {state.best_epoch}")
    return RunResult(state, accelerator.unwrap_model(model), stop)


__all__ = ["train"]

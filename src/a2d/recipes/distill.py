"""Recipe: distill a student from a frozen teacher with a distillation method (A2D by default).

Read top to bottom: load the teacher (frozen: eval mode, no gradients) and check that it shares the
data's vocabulary; build the student and the method (which owns its trainable modules, e.g. the
AAM); put both in the optimizer explicitly; then the same loop as ``train``, with the teacher's
forward pass and the method's loss terms mixed where you can see them:

    L = L_CE + sum_k weight_k * term_k        (A2D: L_CE + lambda * L_att + mu * L_KD, eq. 12)

The student in ``RUN/best`` is a plain model; the method's modules are saved beside it, in
``RUN/method.safetensors`` with ``RUN/method.json``, for analysis (``a2d plot-alignment``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from a2d.config import Config, save_config
from a2d.data.batching import collate, shard_batches, token_batches
from a2d.data.prepare import ParallelData, load_meta
from a2d.data.vocab import Vocabulary
from a2d.losses import label_smoothed_ce
from a2d.methods import ATTENTIONS, HIDDEN_STATES, Progress, get_method
from a2d.models import build_model, count_parameters, load_weights, load_model, use_attention_maps
from a2d.training import (MetricsLog, RunResult, Throughput, TrainState, end_of_epoch, inverse_sqrt_schedule, load_trainer,
                          make_accelerator, make_optimizer, model_inputs, prepare_out_dir, rng_state,
                          save_model_dir, set_rng_state, should_stop, to_device, validate)
from a2d.utils import UserError, atomic_write_text


def load_teacher(path: Path, vocab: Vocabulary, data_dir: Path):
    """The teacher, frozen: eval mode, ``requires_grad=False``; its vocabulary must be the data's."""
    teacher, teacher_vocab = load_model(path)
    if teacher_vocab.checksum() != vocab.checksum():
        raise UserError(f"--teacher {path}: trained with another vocabulary than {data_dir} "
                        "(teacher and student must share the data directory's sentencepiece.model)")
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def distill(cfg: Config, data_dir: Path, out: Path, teacher_path: Path | None, resume: bool = False,
            log=print) -> RunResult:
    data_dir, out = Path(data_dir), Path(out)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    method_cls = get_method(cfg.method)  # an unknown method fails here; a missing teacher when it is built

    # ---- data, teacher, student, method
    load_meta(data_dir)  # a clear error if --data is not a prepared directory
    vocab = Vocabulary.load(data_dir)
    train_data, valid_data = ParallelData.load(data_dir, "train"), ParallelData.load(data_dir, "valid")
    teacher = load_teacher(Path(teacher_path), vocab, data_dir) if teacher_path else None
    student = build_model(cfg, len(vocab), seed=cfg.seed)
    if resume:
        load_weights(student, out / "last")
    method = method_cls(cfg, student.config, teacher.config if teacher is not None else None)
    method.check_data(train_data.meta)
    method.attach(student, teacher)
    if main:  # only now, so a refused run leaves no folder behind
        prepare_out_dir(out, resume)
    accelerator.wait_for_everyone()
    needs = method.needs
    if ATTENTIONS in needs:  # per-head probabilities come from the eager attention kernel
        use_attention_maps(student)
        if teacher is not None:
            use_attention_maps(teacher)

    def param_groups():
        groups = [{"params": [p for p in student.parameters() if p.requires_grad]}]
        extra = [p for p in method.parameters() if p.requires_grad]
        if extra:  # the method's own modules (the AAM), no weight decay, optionally their own lr
            groups.append({"params": extra, "weight_decay": 0.0, "lr": cfg.aam_lr or cfg.lr})
        return groups

    optimizer = make_optimizer(cfg, param_groups())
    scheduler = inverse_sqrt_schedule(optimizer, cfg)
    state = TrainState()
    if resume:
        ckpt = load_trainer(out / "last")
        if "method" in ckpt["tensors"]:
            method.load_state_dict(ckpt["tensors"]["method"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        set_rng_state(ckpt["rng"])
        log(f"resuming {out} at epoch {state.epoch}, update {state.update}")
    elif main:
        save_config(cfg, out / "config.yaml")
    student, optimizer = accelerator.prepare(student, optimizer)
    method.to(accelerator.device)
    if teacher is not None:
        teacher.to(accelerator.device)
    metrics = MetricsLog(out / "metrics.jsonl", main, resume_update=state.update if resume else None)
    if main:
        n_method = sum(p.numel() for p in method.parameters())
        log(f"student: {count_parameters(accelerator.unwrap_model(student)):,} parameters; method {cfg.method} "
            f"({n_method:,} parameters of its own); teacher: "
            + (f"{count_parameters(teacher):,} parameters" if teacher is not None else "none")
            + f"; {accelerator.num_processes} process(es) on {accelerator.device}")

    def save(path: Path, with_trainer: bool) -> None:
        trainer = None
        method_state = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
        if with_trainer:
            trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                       "rng": rng_state(), "state": state, "tensors": {"method": method_state} if method_state else {}}
        if not main:
            return
        save_model_dir(path, accelerator.unwrap_model(student), vocab, cfg, trainer=trainer)
        if not with_trainer and method_state:  # the method's modules of the best student, beside it
            save_file(method_state, out / "method.safetensors.tmp")
            (out / "method.safetensors.tmp").replace(out / "method.safetensors")
            describe = getattr(method, "describe", None)
            info = {"method": cfg.method, **(describe() if describe else {})}
            atomic_write_text(out / "method.json", json.dumps(info, indent=2))

    # ---- the loop
    student.train()
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
            inputs = model_inputs(batch)
            wants = {"output_attentions": ATTENTIONS in needs, "output_hidden_states": HIDDEN_STATES in needs}
            progress = Progress(epoch=state.epoch, update=state.update, updates_per_epoch=len(batches))
            with accelerator.autocast():
                teacher_out = None
                if teacher is not None and method_cls.needs_teacher:
                    with torch.no_grad():
                        teacher_out = teacher(**inputs, **wants)
                student_out = student(**inputs, **wants)
            # Loss arithmetic in fp32, whatever the models' precision.
            ce = label_smoothed_ce(student_out.logits, batch["labels"], cfg.label_smoothing)
            terms = method.loss_terms(batch, student_out, teacher_out, progress)
            weights = method.weights(progress)
            loss = method.ce_weight * ce + sum(weights[k] * terms[k] for k in terms if weights.get(k, 0.0))
            accelerator.backward(loss)
            if accelerator.num_processes > 1:  # the method's modules are not inside DDP: average their grads
                for p in method.parameters():
                    if p.grad is not None:
                        p.grad = accelerator.reduce(p.grad, "mean")
            if cfg.clip_norm > 0:
                accelerator.clip_grad_norm_(list(student.parameters()) + list(method.parameters()), cfg.clip_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.update += 1
            state.batch_in_epoch += 1
            speed.add(int(batch["ntokens"]) * accelerator.num_processes)
            bar.update(1)
            if state.update % cfg.log_every == 0:
                lr, tps = scheduler.get_last_lr()[0], speed.rate()
                bar.set_postfix(loss=f"{loss.item():.3f}", ce=f"{ce.item():.3f}", tok_s=f"{tps:,.0f}",
                                refresh=False)
                metrics.write(type="train", update=state.update, epoch=state.epoch, loss=loss.item(), ce=ce.item(),
                              lr=lr, tokens_per_s=tps, **{k: v.item() for k, v in terms.items()},
                              **{f"w_{k}": v for k, v in weights.items()})
            if cfg.save_every and state.update % cfg.save_every == 0:
                save(out / "last", with_trainer=True)
            if cfg.max_steps and state.update >= cfg.max_steps:
                break
        bar.close()
        if state.batch_in_epoch >= len(batches):
            result = validate(accelerator, student, vocab, valid_data, cfg)
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
        save(out / "best", with_trainer=False)
    accelerator.wait_for_everyone()
    if main:
        log(f"stopped: {stop}; best valid BLEU {state.best_bleu:.2f} at epoch {state.best_epoch}")
    return RunResult(state, accelerator.unwrap_model(student), stop)


__all__ = ["distill", "load_teacher"]

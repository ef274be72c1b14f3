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

import contextlib
import dataclasses
import sys
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm

from a2d.attention import TEACHER_MAPS
from a2d.config import Config, save_config
from a2d.data.batching import collate, shard_batches, token_batches
from a2d.data.prepare import ParallelData, load_meta
from a2d.data.vocab import Vocabulary, check_same_vocabulary
from a2d.errors import BadValue
from a2d.losses import IDS_KEY, IGNORE, label_smoothed_ce
from a2d.methods import (ATTENTIONS, CACHE_READERS, HIDDEN_STATES, KD_TERM, LOGITS, DistillMethod, Progress,
                         get_method)
from a2d.models import (build_model, count_parameters, load_model, load_weights, recorded_beam,
                        resolve_model_dir, use_attention_maps)
from a2d.rundir import BEST, LAST, METHOD_TENSORS, RunDir, TrainState, rng_state
from a2d.teacher_cache import TeacherCache
from a2d.tokenizer import collate_ids
from a2d.training import (RunProgress, RunResult, SavePoints, Throughput, apply_update, check_data_fits, check_finite,
                          end_of_pass, inverse_sqrt_schedule, make_accelerator, make_optimizer, micro_batches,
                          model_inputs, resume_trainer, should_stop, start_run, to_device, translation_validation,
                          validate_the_end)
from a2d.utils import UserError


def load_teacher(path: Path, vocab: Vocabulary, data_dir: Path):
    """The teacher, frozen: eval mode, ``requires_grad=False``; its vocabulary must be the data's."""
    teacher, teacher_vocab = load_model(path)
    check_same_vocabulary(teacher_vocab, vocab, "teacher_path", path, data_dir)  # student and teacher share it
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def open_kd_cache(method: DistillMethod, data_dir: Path, data, vocab, teacher_path: Path | None) -> TeacherCache | None:
    """The run's teacher cache (its method's ``kd_cache``), opened and checked against its temperature, data and
    teacher; None without one. Only a method whose KD term reads it (``reads_kd_cache``) accepts one."""
    path = getattr(method.settings, "kd_cache", "")  # a setting of the word-KD methods only
    if not path:
        return None
    if not method.reads_kd_cache:
        raise UserError(f"kd_cache={path}: method {method.name} does not read a teacher cache "
                        f"({', '.join(CACHE_READERS)} do)")
    if teacher_path is None:
        raise BadValue("teacher_path", None, f"needed with kd_cache={path} (the cache is checked against it)")
    cache = TeacherCache(path)
    cache.check_temperature(method.settings.kd_temperature, teacher_path, data_dir)
    cache.check(data_dir, data, vocab, resolve_model_dir(teacher_path), teacher=str(teacher_path))
    return cache


def take_from_teacher(cfg: Config, teacher, folder: Path, log=None) -> Config:
    """``cfg`` with what a student keeps from its teacher unless told otherwise: the teacher's positions
    (``max_position_embeddings``, where ``max_positions`` is not set) and beam (the ``num_beams`` its
    ``generation_config.json`` records, where ``num_beams`` is 0); ``log`` says what was taken."""
    taken = {}
    if "max_positions" not in cfg.given:
        taken["max_positions"] = int(teacher.config.max_position_embeddings)
    beam = recorded_beam(folder) if not cfg.num_beams else None
    if beam is not None:
        taken["num_beams"] = beam
    taken = {k: v for k, v in taken.items() if getattr(cfg, k) != v}
    if taken and log is not None:
        log(f"student: {', '.join(f'{k}={v}' for k, v in taken.items())}, the teacher's (set them to change)")
    return dataclasses.replace(cfg, **taken) if taken else cfg


def cached_needs(batch: dict) -> set[str]:
    """What of the teacher's forward pass came with ``batch`` from a teacher cache: its logits' top K
    (:data:`LOGITS`) and its attention maps (:data:`ATTENTIONS`, ``--cache-attention``)."""
    return ({LOGITS} if IDS_KEY in batch else set()) | ({ATTENTIONS} if any(k in batch for k in TEACHER_MAPS.values())
                                                       else set())


def distill_step(student, teacher, method, batch: dict, cfg: Config, progress: Progress,
                 autocast=contextlib.nullcontext) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One batch: both forward passes and the loss, mixed where it can be read.

    Returns ``(terms, weights)``: ``terms["loss"]`` is what is back-propagated, ``terms["ce"]`` L_CE, and the
    method's own terms by name (fp32 whatever the models' precision); ``weights`` their weights (with
    ``ce``). ``teacher_precision=fp32`` runs the teacher outside the student's mixed precision.
    """
    inputs = model_inputs(batch)
    needs = method.needs
    wants = {"output_attentions": ATTENTIONS in needs, "output_hidden_states": HIDDEN_STATES in needs}
    teacher_out = None
    cached = IDS_KEY in batch  # kd_cache: the teacher's top-K probabilities came with the batch
    if teacher is not None and method.needs_teacher and not needs <= cached_needs(batch):
        # with a cache, a method that also needs the teacher's maps runs its body without the lm_head
        forward = teacher.model if cached else teacher
        with torch.inference_mode(), (contextlib.nullcontext() if cfg.teacher_precision == "fp32" else autocast()):
            teacher_out = forward(**inputs, **wants)
    with autocast():
        student_out = student(**inputs, **wants)
    ce = label_smoothed_ce(student_out.logits, batch["labels"], cfg.label_smoothing)
    terms = method.loss_terms(batch, student_out, teacher_out, progress)
    weights = {"ce": 1.0, **method.weights(progress)}
    if cfg.loss_mixing == "reference":  # the authors' 0.5*CE + 0.5*KD, means over all target positions
        real_share = float(batch["labels"].ne(IGNORE).sum()) / batch["labels"].numel()
        weights["ce"] *= 0.5 * real_share
        if KD_TERM in weights:
            weights[KD_TERM] *= 0.5 * real_share
    loss = weights["ce"] * ce + sum(weights[k] * terms[k] for k in terms if weights.get(k, 0.0))
    return {"loss": loss, "ce": ce, **terms}, weights


def distill(cfg: Config, data_dir: Path, out: Path, teacher_path: Path | None, resume: bool = False,
            log=print) -> RunResult:
    data_dir, run = Path(data_dir), RunDir(out)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    method_cls = get_method(cfg.method)  # an unknown method fails here; a missing teacher when it is built

    # ---- data, teacher, student, method; all checked before the run folder is touched
    load_meta(data_dir)  # a clear error if data_dir is not a prepared directory
    vocab = Vocabulary.load(data_dir)
    train_data, valid_data = ParallelData.load(data_dir, "train"), ParallelData.load(data_dir, "valid")
    teacher = load_teacher(Path(teacher_path), vocab, data_dir) if teacher_path else None
    if teacher is not None:
        cfg = take_from_teacher(cfg, teacher, resolve_model_dir(teacher_path), log if main else None)
    positions = {"max_positions": cfg.max_positions}
    if teacher is not None:
        positions["the teacher's max_position_embeddings"] = int(teacher.config.max_position_embeddings)
    check_data_fits(cfg, data_dir, {"train": train_data, "valid": valid_data}, positions)
    student = build_model(cfg, len(vocab), seed=cfg.seed, layout=vocab.layout)  # a brought tokenizer's ids
    method = method_cls(cfg.settings, student.config, teacher.config if teacher is not None else None)
    method.check_data(train_data.meta)
    method.attach(student, teacher)
    cache = open_kd_cache(method, data_dir, train_data, vocab, teacher_path)  # None without kd_cache=
    map_kinds = method.cached_map_kinds(cache.attention, f"kd_cache={cache.path}") if cache is not None else ()
    resumed = start_run(accelerator, run, resume, cfg, vocab, log)
    if resumed:
        load_weights(student, run.last)
    if ATTENTIONS in method.needs:  # per-head probabilities come from the eager attention kernel
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
    if resumed:
        state = resume_trainer(accelerator, run, optimizer, scheduler, method, log)
    elif main:
        save_config(cfg, run.config_file)
    student, optimizer = accelerator.prepare(student, optimizer)
    method.to(accelerator.device)
    from_cache = ({LOGITS} if cache is not None else set()) | ({ATTENTIONS} if map_kinds else set())
    teacher_runs = teacher is not None and method.needs_teacher and not method.needs <= from_cache
    if teacher_runs:  # (with kd_cache, word KD's teacher is only checked, never run; A2D's with the maps cached)
        teacher.to(accelerator.device)
    metrics = run.metrics_log(main, state if resumed else None)
    if main:
        n_method = sum(p.numel() for p in method.parameters())
        log(f"student: {count_parameters(accelerator.unwrap_model(student)):,} parameters; method {cfg.method} "
            f"({n_method:,} parameters of its own); teacher: "
            + (f"{count_parameters(teacher):,} parameters" if teacher is not None else "none")
            + f"; {accelerator.num_processes} process(es) on {accelerator.device}")
        if cache is not None:
            log(f"kd_cache {cache.path}: the KD term reads the teacher's top {cache.topk} probabilities"
                + (f", the attention terms its {', '.join(map_kinds)} maps" if map_kinds else "")
                + ("; the teacher runs for its attention maps only" if teacher_runs else "; the teacher does not run"))

    def save(which: str) -> None:
        method_state = {k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()}
        trainer = None
        if which == LAST:  # every process's RNG state, so that each resumes its own dropout stream
            rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
            trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
                       "state": state, "tensors": {METHOD_TENSORS: method_state} if method_state else {}}
        if not main:
            return
        run.save(which, accelerator.unwrap_model(student), vocab, cfg, trainer=trainer)
        if which == BEST and method_state:  # the method's modules of the best student, beside it
            describe = getattr(method, "describe", None)
            run.save_method(method_state, {"method": cfg.method, **(describe() if describe else {})})

    # ---- the loop (Ctrl-C or SIGTERM: last/ is saved at the end of the update under way, then Interrupted)
    student.train()
    speed = Throughput()
    progress_line = RunProgress(main, log, int(train_data.tgt_lens.sum()) + len(train_data), accelerator.device)
    savepoints = SavePoints(cfg, accelerator, run)
    stop = should_stop(state, cfg)
    validated = None  # the update of this process's last validation
    validation = translation_validation(accelerator, student, vocab, valid_data, cfg)
    with savepoints:
        while stop is None:
            batches = token_batches(train_data.src_lens, train_data.tgt_lens, cfg.max_tokens, shuffle=True,
                                    seed=cfg.seed, epoch=state.epoch)
            batches = shard_batches(batches, accelerator.process_index, accelerator.num_processes)
            updates_per_epoch = len(micro_batches(batches, cfg.update_freq))
            bar = tqdm(total=len(batches), initial=state.batch_in_epoch, desc=f"epoch {state.epoch}",
                       disable=not main, leave=False, dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 60.0)
            if progress_line.updates == 0:
                progress_line.starting(len(batches), updates_per_epoch)
            for group in micro_batches(batches[state.batch_in_epoch:], cfg.update_freq):
                progress = Progress(epoch=state.epoch, update=state.update, updates_per_epoch=updates_per_epoch)
                ntokens = 0
                for i, idx in enumerate(group):
                    batch = collate([train_data[j] for j in idx], **collate_ids(vocab))
                    if cache is not None:  # the teacher's top-K at each target position, from kd_cache
                        batch.update(cache.lookup(idx, batch["labels"].shape[1]))
                        if map_kinds:  # and its attention maps
                            batch.update(cache.lookup_maps(idx, batch, map_kinds))
                    batch = to_device(batch, accelerator.device)
                    with contextlib.nullcontext() if i == len(group) - 1 else accelerator.no_sync(student):
                        terms, weights = distill_step(student, teacher, method, batch, cfg, progress,
                                                      accelerator.autocast)
                        check_finite(accelerator, state.update + 1, terms)
                        accelerator.backward(terms["loss"] / len(group))
                    ntokens += int(batch["ntokens"])
                if accelerator.num_processes > 1:  # the method's modules are not inside DDP: average their grads
                    for p in method.parameters():
                        if p.grad is not None:
                            p.grad = accelerator.reduce(p.grad, "mean")
                if cfg.clip_norm > 0:
                    accelerator.clip_grad_norm_(list(student.parameters()) + list(method.parameters()), cfg.clip_norm)
                apply_update(optimizer, scheduler, state, len(group))
                speed.add(ntokens * accelerator.num_processes)
                bar.update(len(group))
                progress_line.update(bar, ntokens * accelerator.num_processes, terms)
                if state.update % cfg.log_every == 0:
                    lr, tps = scheduler.get_last_lr()[0], speed.rate()
                    values = {k: v.item() for k, v in terms.items()}
                    metrics.write(type="train", update=state.update, epoch=state.epoch, **values, lr=lr,
                                  tokens_per_s=tps, **{f"w_{k}": v for k, v in weights.items() if k != "ce"})
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
    return RunResult(state, accelerator.unwrap_model(student), stop)


__all__ = ["distill", "distill_step", "cached_needs", "load_teacher", "open_kd_cache", "take_from_teacher"]

"""Recipe: train, or distill with a method, a model of another family (:mod:`a2d.families`): a BERT-style sequence
classifier (the paper's Table 6) or a decoder-only language model (GPT-2 / Llama style).

The same run folder, resume, progress, metrics and checkpoints as the translation recipes (:mod:`a2d.training`,
:mod:`a2d.rundir`); what differs is the data (:mod:`a2d.data.tasks`), the model (its family) and the validation:

    classification: L = L_CE(class)  [+ lambda * L_att(enc_self) + mu * L_KD(class logits)]   score: the task's metric
    lm:             L = L_CE(next token) [+ lambda * L_att(causal self) + mu * L_KD(next token)] score: perplexity

Read top to bottom: data and tokenizer, teacher (frozen), student and method, optimizer; then the loop (batches under
a token budget, one update per ``update_freq`` batches), validation after each epoch, ``best/`` on a better score,
early stopping on ``patience``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import AutoConfig

from a2d.config import FIELDS, Config, save_config
from a2d.data.batching import shard_batches, token_batches
from a2d.data.tasks import TaskData, TokenizerFiles, load_task_meta, special_ids
from a2d.families import FAMILIES, Family, family_for, family_of
from a2d.losses import IGNORE, label_smoothed_ce
from a2d.methods import ATTENTIONS, HIDDEN_STATES, DistillMethod, Progress, get_method
from a2d.models import check_fit, count_parameters
from a2d.rundir import BEST, LAST, METHOD_TENSORS, RunDir, TrainState, resolve_model_dir, rng_state
from a2d.training import (RunProgress, RunResult, SavePoints, Throughput, Validation, apply_update, check_finite,
                          end_of_pass, inverse_sqrt_schedule, make_accelerator, make_optimizer, micro_batches,
                          resume_trainer, should_stop, start_run, to_device, validate_the_end)
from a2d.utils import UserError, atomic_write_text


# ------------------------------------------------------------------------------------------------ batches
def collate_task(data: TaskData, indices, pad_id: int, task: str) -> dict[str, torch.Tensor]:
    """A padded batch (right padding): ``input_ids``, ``attention_mask``, ``token_type_ids`` (classification),
    ``labels``: the class ``(B,)``, or for a language model the next token ``(B, T)`` (``IGNORE`` after the last
    real token); ``ntokens``: the tokens the loss is taken over."""
    seqs = [data.ids[i] for i in indices]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    types = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, i in enumerate(indices):
        n = len(data.ids[i])
        ids[row, :n] = torch.from_numpy(data.ids[i])
        types[row, :n] = torch.from_numpy(data.types[i])
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if task == "classification":
        batch["token_type_ids"] = types
        batch["labels"] = torch.from_numpy(data.labels[list(indices)]).long()
        batch["ntokens"] = mask.sum()  # the tokens read (throughput); the loss is a mean over the examples
    else:
        labels = torch.full_like(ids, IGNORE)
        labels[:, :-1] = ids[:, 1:]
        labels[:, :-1][mask[:, 1:] == 0] = IGNORE
        batch["labels"] = labels
        batch["ntokens"] = labels.ne(IGNORE).sum()
    return batch


def task_batches(data: TaskData, cfg: Config, shuffle: bool, epoch: int) -> list[list[int]]:
    return token_batches(data.lengths, data.lengths, cfg.max_tokens, shuffle=shuffle, seed=cfg.seed, epoch=epoch)


# ------------------------------------------------------------------------------------------------ scores
def classification_scores(labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, F1 of class 1 (binary tasks) and Matthews correlation, in percent as GLUE reports them."""
    acc = float((labels == predictions).mean()) if len(labels) else 0.0
    out = {"accuracy": 100 * acc}
    if len(labels) and labels.max() <= 1 and predictions.max() <= 1:
        tp = float(((predictions == 1) & (labels == 1)).sum())
        fp = float(((predictions == 1) & (labels == 0)).sum())
        fn = float(((predictions == 0) & (labels == 1)).sum())
        tn = float(((predictions == 0) & (labels == 0)).sum())
        out["f1"] = 100 * (2 * tp / max(2 * tp + fp + fn, 1.0))
        denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        out["mcc"] = 100 * ((tp * tn - fp * fn) / denom if denom else 0.0)
    return out


@torch.no_grad()
def predict(model, family: Family, data: TaskData, cfg: Config, device, pad_id: int, indices=None) -> dict:
    """Per-example results of ``model`` on ``data`` (``indices``: a subset, e.g. this process's shard):
    classification ``{"index", "prediction", "label"}``; lm ``{"index", "nll" (summed over its tokens), "tokens"}``."""
    task = data.meta["task"]
    model.eval()
    keep = set(range(len(data)) if indices is None else indices)
    batches = [[i for i in b if i in keep] for b in task_batches(data, cfg, shuffle=False, epoch=0)]
    rows = {"index": [], "prediction": [], "label": [], "nll": [], "tokens": []}
    for idx in (b for b in batches if b):
        batch = to_device(collate_task(data, idx, pad_id, task), device)
        logits = model(**family.inputs(batch)).logits.float()
        rows["index"] += idx
        if task == "classification":
            rows["prediction"] += logits.argmax(-1).tolist()
            rows["label"] += batch["labels"].tolist()
        else:
            labels = batch["labels"]
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
            real = labels.ne(IGNORE)
            rows["nll"] += (nll * real).sum(1).tolist()
            rows["tokens"] += real.sum(1).tolist()
    model.train()
    return {k: v for k, v in rows.items() if v or k == "index"}


def summarise(data: TaskData, rows: dict) -> dict[str, float]:
    """The split's scores from :func:`predict`'s rows: classification metrics, or ``loss`` (NLL per token) and
    ``perplexity``. ``score`` is the one early stopping follows (higher is better: the metric, or -perplexity)."""
    if data.meta["task"] == "classification":
        out = classification_scores(np.array(rows["label"]), np.array(rows["prediction"]))
        out["score"] = out.get(data.meta.get("metric", "accuracy"), out["accuracy"])
        return out
    loss = float(np.sum(rows["nll"]) / max(np.sum(rows["tokens"]), 1))
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "score": -math.exp(min(loss, 50.0))}


def validate_task(accelerator, model, family, data: TaskData, cfg: Config, pad_id: int) -> dict[str, float]:
    """:func:`summarise` of the validation split, each process predicting its share, gathered."""
    rank, world = accelerator.process_index, accelerator.num_processes
    rows = predict(accelerator.unwrap_model(model), family, data, cfg, accelerator.device, pad_id,
                   indices=range(rank, len(data), world))
    if world > 1:
        parts = gather_object([rows])
        rows = {k: [x for part in parts for x in part.get(k, [])] for k in rows}
    return {f"valid_{k}": v for k, v in summarise(data, rows).items()}


# ------------------------------------------------------------------------------------------------ models
def build_student(cfg: Config, family: Family, tokenizer, meta: dict):
    special = {**special_ids(tokenizer), "label_names": meta.get("label_names")}
    return family.build(cfg, len(tokenizer), special, num_labels=len(meta.get("label_names") or []), seed=cfg.seed)


def load_family_model(path: Path | str, family: Family | None = None):
    """A model folder of a family (a run's ``best/``, or a folder you bring), its weights checked against its
    ``config.json`` (:func:`a2d.models.check_fit`)."""
    types = tuple(t for f in FAMILIES.values() if family is None or f.task == family.task for t in f.model_types)
    folder = resolve_model_dir(path, types)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: cannot read its config.json ({str(e).splitlines()[0]})") from None
    found = family_of(config)
    if family is not None and found.task != family.task:
        raise UserError(f"{folder}: a {found.name} model ({found.task}); the data is for {family.task}")
    try:
        model, info = found.model_class.from_pretrained(folder, use_safetensors=True, output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise UserError(f"{folder}: cannot load the model ({str(e).splitlines()[0]})") from None
    check_fit(folder, info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"], info["error_msgs"])
    return model, found


def evaluate_task(model_path: Path | str, data_dir: Path | str, split: str = "test", out: Path | None = None,
                  max_tokens: int = 4096) -> dict:
    """Scores of a model folder (or run) on a split of a prepared folder, and its per-example results (``rows``);
    ``out``: written as JSON."""
    meta = load_task_meta(data_dir)
    family = family_for(meta["task"], meta.get("family", "auto"))
    model, family = load_family_model(model_path, family)
    tokens = TokenizerFiles.load(data_dir)
    if TokenizerFiles.load(resolve_model_dir(model_path, family.model_types)).checksum() != tokens.checksum():
        raise UserError(f"{model_path}: its tokenizer is not the one of {data_dir}")
    data = TaskData.load(data_dir, split)
    cfg = Config(max_tokens=max_tokens)
    rows = predict(model, family, data, cfg, torch.device("cpu"), int(tokens.tokenizer.pad_token_id))
    order = np.argsort(rows["index"])
    rows = {k: [v[i] for i in order] for k, v in rows.items()}
    result = {"model": str(model_path), "data": str(data_dir), "split": split, "examples": len(data),
              **{k: v for k, v in summarise(data, rows).items() if k != "score"}, "rows": rows}
    if out is not None:
        atomic_write_text(Path(out), json.dumps(result) + "\n")
    return result


def task_readme(family: Family, meta: dict) -> str:
    cls = family.model_class.__name__
    use = ("logits = model(**tok(text_a, text_b, return_tensors='pt')).logits  # class = logits.argmax(-1)"
           if family.task == "classification" else
           "out = model.generate(**tok(tok.bos_token + 'A man', return_tensors='pt'), max_new_tokens=20)")
    return (f"# {family.name} model trained with a2d\n\nA Hugging Face `{cls}` folder; transformers alone uses it:\n\n"
            f"```python\nfrom transformers import AutoTokenizer, {cls}\ntok = AutoTokenizer.from_pretrained(FOLDER)\n"
            f"model = {cls}.from_pretrained(FOLDER)\n{use}\n```\n\nTask: {family.task}"
            + (f", labels {', '.join(meta.get('label_names') or [])}" if family.task == "classification" else "")
            + ".\n")


#: Settings a run of another family does not use: translation's decoding and initialisation, and the stack it lacks.
TRANSLATION_ONLY = ("valid_beam", "valid_max_sentences", "max_len_a", "max_len_b", "num_beams", "init", "loss_mixing",
                    "teacher_precision", "activation_dropout")
UNUSED_STACK = {"encoder": ("encoder_layers", "encoder_attention_heads"),
                "decoder": ("decoder_layers", "decoder_attention_heads")}


def check_settings_used(cfg: Config, family: Family) -> None:
    """Refuse a setting given another value than its default that a run of ``family`` would not use (one line)."""
    unused = list(TRANSLATION_ONLY)
    for side, keys in UNUSED_STACK.items():
        if side not in family.sides:
            unused += keys
    dropped = [k for k in unused if k in cfg.given and getattr(cfg, k) != FIELDS[k].default]
    if dropped:
        raise UserError(f"{', '.join(f'{k}={getattr(cfg, k)!r}' for k in dropped)}: not used by a {family.name} "
                        f"({family.task}) run; drop {'it' if len(dropped) == 1 else 'them'}")


# ------------------------------------------------------------------------------------------------ the recipe
def fit_task(cfg: Config, data_dir: Path, out: Path, teacher_path: Path | None = None, resume: bool = False,
             log=print) -> RunResult:
    """Train (no ``cfg.method``) or distill (a method, a teacher for those that need one) a classifier or a
    language model on a folder :func:`a2d.data.tasks.prepare_task` wrote."""
    data_dir, run = Path(data_dir), RunDir(out)
    meta = load_task_meta(data_dir)
    task = meta["task"]
    family = family_for(task, meta.get("family", "auto"))
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process

    # ---- data, teacher, student, method; all checked before the run folder is touched
    tokens = TokenizerFiles.load(data_dir)
    pad_id = int(tokens.tokenizer.pad_token_id)
    train_data, valid_data = TaskData.load(data_dir, "train"), TaskData.load(data_dir, "valid")
    longest = int(max(train_data.lengths.max(), valid_data.lengths.max()))
    if longest > cfg.max_positions:
        raise UserError(f"max_positions={cfg.max_positions} is below the longest example of {data_dir} ({longest} "
                        "tokens); raise max_positions")
    if longest + 1 > cfg.max_tokens:
        raise UserError(f"max_tokens={cfg.max_tokens} is smaller than the longest example of {data_dir} "
                        f"({longest + 1} tokens); raise max_tokens")
    teacher = None
    if teacher_path is not None:
        teacher, teacher_family = load_family_model(teacher_path, family)
        family = teacher_family  # a gpt2 or a llama teacher: the student is of its family
        teacher_tokens = TokenizerFiles.load(resolve_model_dir(teacher_path, family.model_types))
        if teacher_tokens.checksum() != tokens.checksum():
            raise UserError(f"teacher {teacher_path}: its tokenizer is not the one of {data_dir} (prepare the data "
                            "with the teacher's tokenizer)")
        teacher.eval()
        teacher.requires_grad_(False)
        labels = len(meta.get("label_names") or [])
        if task == "classification" and int(teacher.config.num_labels) != labels:
            raise UserError(f"teacher {teacher_path}: {teacher.config.num_labels} classes, the data has {labels} "
                            f"({', '.join(meta['label_names'])})")
        if "max_positions" not in cfg.given:  # the student reads what the teacher reads, unless told otherwise
            cfg = dataclasses.replace(cfg, max_positions=int(teacher.config.max_position_embeddings))
    check_settings_used(cfg, family)
    student = build_student(cfg, family, tokens.tokenizer, meta)
    method: DistillMethod | None = None
    if cfg.method is not None:
        method = get_method(cfg.method)(cfg.settings, student.config, teacher.config if teacher is not None else None)
        method.attach(student, teacher)
        if getattr(method.settings, "kd_cache", ""):
            raise UserError(f"kd_cache: a teacher cache serves translation models only ({family.name} here)")
    resumed = start_run(accelerator, run, resume, cfg, tokens, log)
    needs = method.needs if method is not None else frozenset()
    if ATTENTIONS in needs:  # per-head probabilities come from the eager attention kernel
        for model in (student, teacher):
            if model is not None:
                model.set_attn_implementation("eager")
    if teacher is not None:
        teacher.to(accelerator.device)

    groups = [{"params": [p for p in student.parameters() if p.requires_grad]}]
    extra = [p for p in method.parameters() if p.requires_grad] if method is not None else []
    if extra:  # the method's own modules (the AAM), no weight decay
        groups.append({"params": extra, "weight_decay": 0.0, "lr": cfg.aam_lr or cfg.lr})
    optimizer = make_optimizer(cfg, groups)
    scheduler = inverse_sqrt_schedule(optimizer, cfg)
    state = TrainState()
    if resumed:
        student.load_state_dict(family.model_class.from_pretrained(run.last, use_safetensors=True).state_dict())
        state = resume_trainer(accelerator, run, optimizer, scheduler, method, log)
    elif main:
        save_config(cfg, run.config_file)
    student, optimizer = accelerator.prepare(student, optimizer)
    if method is not None:
        method.to(accelerator.device)
    metrics = run.metrics_log(main, state if resumed else None)
    score_name = meta.get("metric", "accuracy") if task == "classification" else "perplexity"
    if main:
        what = f"method {method.name}; teacher {count_parameters(teacher):,} parameters; " if method else ""
        log(f"{family.name} {task}: student {count_parameters(accelerator.unwrap_model(student)):,} parameters; "
            f"{what}train {len(train_data):,} / valid {len(valid_data):,} examples; "
            f"{accelerator.num_processes} process(es) on {accelerator.device}")

    readme = task_readme(family, meta)

    def save(which: str) -> None:
        trainer = None
        if which == LAST:
            rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
            trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rngs,
                       "state": state}
            if method is not None and len(method.state_dict()):
                trainer["tensors"] = {METHOD_TENSORS: {k: v.detach().cpu().contiguous()
                                                 for k, v in method.state_dict().items()}}
        if main:
            run.save(which, accelerator.unwrap_model(student), tokens, cfg, trainer=trainer, readme=readme)
            if which == BEST and method is not None and hasattr(method, "describe") and len(method.state_dict()):
                run.save_method({k: v.detach().cpu().contiguous() for k, v in method.state_dict().items()},
                                method.describe())

    def step(batch, progress) -> dict[str, torch.Tensor]:
        wants = {"output_attentions": ATTENTIONS in needs, "output_hidden_states": HIDDEN_STATES in needs}
        inputs = family.inputs(batch)
        teacher_out = None
        if teacher is not None and method is not None and method.needs_teacher:
            with torch.no_grad(), accelerator.autocast():
                teacher_out = family.outputs(teacher(**inputs, **wants))
        with accelerator.autocast():
            student_out = family.outputs(student(**inputs, **wants))
        ce = label_smoothed_ce(student_out.logits, batch["labels"], cfg.label_smoothing)
        if method is None:
            return {"loss": ce, "ce": ce}
        terms = method.loss_terms(family.method_batch(batch), student_out, teacher_out, progress)
        weights = {"ce": 1.0, **method.weights(progress)}
        loss = ce + sum(weights[k] * terms[k] for k in terms if weights.get(k, 0.0))
        return {"loss": loss, "ce": ce, **terms}

    # ---- the loop
    student.train()
    speed = Throughput()
    progress_line = RunProgress(main, log, int(train_data.lengths.sum()), accelerator.device)
    savepoints = SavePoints(cfg, accelerator, run)
    stop = should_stop(state, cfg)
    validated = None  # the update of this process's last validation
    # best_bleu holds the best validation score (higher is better: the task's metric, minus the perplexity)
    validation = Validation(lambda: validate_task(accelerator, student, family, valid_data, cfg, pad_id), "valid_score",
                            lambda r: f"valid {score_name} {r['valid_' + score_name]:.2f}")
    with savepoints:
        while stop is None:
            batches = shard_batches(task_batches(train_data, cfg, shuffle=True, epoch=state.epoch),
                                    accelerator.process_index, accelerator.num_processes)
            bar = tqdm(total=len(batches), initial=state.batch_in_epoch, desc=f"epoch {state.epoch}",
                       disable=not main, leave=False, dynamic_ncols=True,
                       mininterval=1.0 if sys.stderr.isatty() else 60.0)
            if progress_line.updates == 0:
                progress_line.starting(len(batches), len(micro_batches(batches, cfg.update_freq)))
            updates_per_epoch = len(micro_batches(batches, cfg.update_freq))
            for group in micro_batches(batches[state.batch_in_epoch:], cfg.update_freq):
                progress = Progress(epoch=state.epoch, update=state.update, updates_per_epoch=updates_per_epoch)
                ntokens = 0
                for i, idx in enumerate(group):
                    batch = to_device(collate_task(train_data, idx, pad_id, task), accelerator.device)
                    with contextlib.nullcontext() if i == len(group) - 1 else accelerator.no_sync(student):
                        terms = step(batch, progress)
                        check_finite(accelerator, state.update + 1, terms)
                        accelerator.backward(terms["loss"] / len(group))
                    ntokens += int(batch["ntokens"])
                if method is not None and accelerator.num_processes > 1:
                    for p in method.parameters():
                        if p.grad is not None:
                            p.grad = accelerator.reduce(p.grad, "mean")
                if cfg.clip_norm > 0:
                    params = list(student.parameters()) + (list(method.parameters()) if method is not None else [])
                    accelerator.clip_grad_norm_(params, cfg.clip_norm)
                apply_update(optimizer, scheduler, state, len(group))
                speed.add(ntokens * accelerator.num_processes)
                bar.update(len(group))
                progress_line.update(bar, ntokens * accelerator.num_processes, terms)
                if state.update % cfg.log_every == 0:
                    metrics.write(type="train", update=state.update, epoch=state.epoch,
                                  **{k: v.item() for k, v in terms.items()}, lr=scheduler.get_last_lr()[0],
                                  tokens_per_s=speed.rate())
                savepoints.after_update(state.update, lambda: save(LAST), bar)
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
        best = state.best_bleu if task == "classification" else -state.best_bleu
        log(f"stopped: {stop}; best valid {score_name} {best:.2f} at epoch {state.best_epoch}")
    return RunResult(state, accelerator.unwrap_model(student), stop)


__all__ = ["fit_task", "collate_task", "predict", "summarise", "classification_scores", "load_family_model",
           "validate_task", "evaluate_task"]

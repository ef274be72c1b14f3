"""The ``a2d`` command: parses arguments and calls the recipes and components. Nothing else lives here.

Parsing loads nothing heavy (no torch, no transformers): each command's components are named in
:data:`COMMANDS` as ``"module:name"`` and imported when that command runs.
"""
from __future__ import annotations

import argparse
import functools
import importlib
import shlex
import sys
from pathlib import Path

import yaml

from a2d.allocator import keep_large_allocations
from a2d.config import ConfigError, preset_names, read_yaml
from a2d.defaults import (CACHE_MAX_TOKENS, CACHE_SHARD_SIZE, CACHE_TEMPERATURE, DEMO_STEPS, QUANTIZATIONS, SEQ_KD_BEAM,
                          SHORTLIST_FREQUENT, SHORTLIST_TOP_N)
from a2d.errors import (BadValue, CannotCreate, NotAnAlignmentRun, NotDistilledData, NothingToResume, OutputExists,
                        OutputUnwritable, ResumeMismatch, TeacherRequired, UnknownMethod)
from a2d.experiments import command as reproduce  # light: its arguments; the work is a2d.experiments.runner
from a2d.rundir import RunDir
from a2d.utils import UserError, check_output_file


def _config(args, load_config, train: bool = False):
    """Defaults < saved config (when resuming) < preset < flags < key=value overrides (:func:`a2d.settings.load_config`,
    which imports the methods, so it comes as a component); ``train``: no method."""
    flags = [f"{k}={v}" for k, v in (("max_epochs", args.max_epochs), ("max_steps", args.max_steps),
                                    ("seed", args.seed)) if v is not None]
    if getattr(args, "method", None):
        flags.append(f"method={args.method}")
    run = RunDir(args.out)
    saved = run.saved_config() if args.resume else None
    if args.preset is None and saved is None:
        raise UserError("--preset is required (one of " + ", ".join(preset_names()) + ", or a YAML file)"
                        + (f"; {run.config_file} does not exist, so --resume has no saved settings"
                           if args.resume else ""))
    return load_config(args.preset, flags + list(args.overrides), base=read_yaml(saved) if saved else None,
                       train=train)


# ---------------------------------------------------------------------------------------------- handlers
# Each takes the parsed arguments and the components its COMMANDS entry names, in that order.
def cmd_prepare(args, locate_corpus, prepare, summary_lines):
    if args.corpus:
        if args.train_src or args.train_tgt:
            raise UserError("give either --corpus or --train-src/--train-tgt/--valid-src/--valid-tgt, not both")
        splits = locate_corpus(args.corpus, args.src, args.tgt)
    else:
        need = {"--train-src": args.train_src, "--train-tgt": args.train_tgt,
                "--valid-src": args.valid_src, "--valid-tgt": args.valid_tgt}
        missing = [k for k, v in need.items() if not v]
        if missing:
            raise UserError(f"missing {', '.join(missing)} (or use --corpus NAME)")
        splits = {"train": (Path(args.train_src), Path(args.train_tgt)),
                  "valid": (Path(args.valid_src), Path(args.valid_tgt))}
        if bool(args.test_src) != bool(args.test_tgt):
            raise UserError("give both --test-src and --test-tgt, or neither")
        if args.test_src:
            splits["test"] = (Path(args.test_src), Path(args.test_tgt))
    meta = prepare(Path(args.out), splits, args.src, args.tgt, vocab_size=args.vocab_size,
                   max_train=args.max_train, max_len=args.max_len, vocab=args.vocab, log=print,
                   overwrite=args.overwrite, tokenizer=args.tokenizer)
    print("\n".join(summary_lines(meta)))


def cmd_prepare_task(args, prepare_sources):
    files = {s: Path(f) for s, f in (("train", args.train), ("valid", args.valid), ("test", args.test)) if f}
    if files and not (args.train and args.valid):
        raise UserError("give --train and --valid text files (and --test if you have one)")
    prepare_sources(Path(args.out), args.task, family=args.family, glue=args.glue, glue_name=args.glue_task,
                    standin=args.standin, files=files or None, tokenizer=args.tokenizer, vocab_size=args.vocab_size,
                    max_len=args.max_len, max_train=args.max_train, seed=args.seed)
    print(f"wrote {args.out}")


def cmd_train(args, train, fit_task, data_task, load_config):
    recipe = train if data_task(Path(args.data)) == "translation" else fit_task  # a2d prepare-task's folders
    recipe(_config(args, load_config, train=True), Path(args.data), Path(args.out), resume=args.resume)


def cmd_distill(args, distill, fit_task, data_task, load_config):
    recipe = distill if data_task(Path(args.data)) == "translation" else fit_task
    recipe(_config(args, load_config), Path(args.data), Path(args.out), Path(args.teacher) if args.teacher else None,
           resume=args.resume)


def cmd_distill_data(args, build_cache, distill_data):
    if args.cache_topk is not None:  # word-level KD: the teacher's top-K log-probabilities, not translations
        for option, value in (("--beam", args.beam), ("--engine", args.engine), ("--threads", args.threads)):
            if value is not None:
                raise UserError(f"{option}: not used with --cache-topk (the teacher is teacher-forced on the "
                                "references)")
        build_cache(Path(args.teacher), Path(args.data), Path(args.out), topk=args.cache_topk,
                    max_tokens=CACHE_MAX_TOKENS if args.max_tokens is None else args.max_tokens,
                    shard_size=CACHE_SHARD_SIZE if args.shard_size is None else args.shard_size,
                    temperature=CACHE_TEMPERATURE if args.kd_temperature is None else args.kd_temperature,
                    attention=args.cache_attention)
        return
    for option, value in (("--max-tokens", args.max_tokens), ("--shard-size", args.shard_size),
                          ("--kd-temperature", args.kd_temperature), ("--cache-attention", args.cache_attention or None)):
        if value is not None:
            raise UserError(f"{option}: used with --cache-topk only")
    distill_data(Path(args.teacher), Path(args.data), Path(args.out),
                 beam=SEQ_KD_BEAM if args.beam is None else args.beam, engine=args.engine, threads=args.threads)


def cmd_evaluate(args, evaluate_model, describe_shortlist, evaluate_task, data_task):
    out = Path(args.out) if args.out else None
    task = data_task(Path(args.data))
    if task != "translation":  # a classifier or a language model (a2d prepare-task)
        dropped = [flag for flag, given in (("--beam", args.beam is not None), ("--threads", args.threads != 1),
                                            ("--translators", args.translators != 1), ("--shortlist", args.shortlist))
                   if given]
        if dropped:
            raise UserError(f"{' '.join(dropped)}: decoding options of translation models; {args.data} is a {task} "
                            "task (scored without decoding)")
        result = evaluate_task(Path(args.model), Path(args.data), split=args.split, out=out, max_tokens=args.max_tokens)
        shown = {k: v for k, v in result.items() if k in ("accuracy", "f1", "mcc", "loss", "perplexity")}
        print("  ".join(f"{k} {v:.2f}" for k, v in shown.items()) + f"  {result['examples']} examples ({args.split})")
        if out:
            print(f"wrote {out}")
        return
    result = evaluate_model(Path(args.model), Path(args.data), split=args.split, beam=args.beam, out=out,
                            max_tokens=args.max_tokens, threads=args.threads, shortlist=args.shortlist,
                            translators=args.translators)
    note = _shortlist_note(Path(args.model), result["shortlist"], describe_shortlist)
    if note:
        print(note)
    (lo, hi), (clo, chi) = result["bleu_ci"], result["chrf_ci"]
    print(f"BLEU {result['bleu']:.2f} (95% CI {lo:.2f}-{hi:.2f})  chrF {result['chrf']:.2f} (95% CI "
          f"{clo:.2f}-{chi:.2f})  {result['sentences']} sentences, {result['sentences_per_second']:.1f} sent/s")
    print(result["signature"])
    if out:
        print(f"wrote {out} and {out.with_suffix('.hyp')}")


def _shortlist_note(model: Path, shortlist: str | None, describe_shortlist) -> str | None:
    """Whether a CTranslate2 export decoded with its shortlist (None for another model, or an export without one)."""
    if shortlist:
        return f"shortlist on: {shortlist}"
    if describe_shortlist(model) is not None:
        return f"shortlist off: {model} has one; give --shortlist to decode with it"
    return None


def _stdin_lines() -> list[str]:
    """Standard input as lines of text; bytes that are not UTF-8 are an error naming the line."""
    lines = []
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            lines.append(raw.decode("utf-8").rstrip("\r\n"))
        except UnicodeDecodeError:
            raise UserError(f"stdin:{number}: not valid UTF-8") from None
    return lines


def cmd_translate(args, load_translator, describe_shortlist):
    if args.beam is not None and args.beam < 1:
        raise UserError(f"--beam {args.beam}: must be at least 1")
    translator = load_translator(Path(args.model), threads=args.threads, shortlist=args.shortlist,
                                 translators=args.translators)
    note = _shortlist_note(Path(args.model), getattr(translator, "shortlist", None), describe_shortlist)
    if note:
        print(f"a2d: {note}", file=sys.stderr)
    lines = _stdin_lines()
    beam = translator.default_beam if args.beam is None else args.beam
    for hyp in translator.translate(lines, beam=beam, max_tokens=args.max_tokens):
        print(hyp)


def cmd_export(args, export):
    export(Path(args.model), Path(args.out), quantization=args.quantization)


def cmd_shortlist(args, write_shortlist):
    write_shortlist(Path(args.data), Path(args.model), top_n=args.top_n, frequent=args.frequent)


def cmd_plot(args, plot_training_curves):
    check_output_file(args.out)
    plot_training_curves([Path(r) for r in args.runs], Path(args.out))
    print(f"wrote {args.out}")


def cmd_plot_alignment(args, plot_alignment, format_summary):
    check_output_file(args.out)
    summary = plot_alignment(Path(args.run), Path(args.out))
    print(format_summary(summary))
    print(f"wrote {args.out}")


def cmd_methods(args, methods):
    width = max(map(len, methods))
    for name, cls in methods.items():
        print(f"{name:<{width}}  {cls.summary}  [{cls.paper}]")


def cmd_config(args, load_config, describe_keys):
    if args.keys:
        print(describe_keys())
        return
    cfg = load_config(args.preset, args.overrides)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")


def cmd_demo(args, demo):
    demo(Path(args.out), steps=args.steps, seed=args.seed, train_teacher=args.train_teacher,
         max_train=args.max_train, parallel=False if args.one_at_a_time else None)


def cmd_reproduce(args, reproduce_grid):
    reproduce_grid(args)


#: Each command's handler and the components it calls ("module:name", imported when the command runs).
COMMANDS = {
    "prepare": (cmd_prepare, "a2d.data.corpus:locate_corpus", "a2d.data.prepare:prepare",
                "a2d.data.prepare:summary_lines"),
    "prepare-task": (cmd_prepare_task, "a2d.data.tasks:prepare_sources"),
    "train": (cmd_train, "a2d.recipes.train:train", "a2d.recipes.task:fit_task", "a2d.data.tasks:data_task",
              "a2d.settings:load_config"),
    "distill": (cmd_distill, "a2d.recipes.distill:distill", "a2d.recipes.task:fit_task", "a2d.data.tasks:data_task",
                "a2d.settings:load_config"),
    "distill-data": (cmd_distill_data, "a2d.recipes.cache_teacher:build_cache",
                     "a2d.recipes.distill_data:distill_data"),
    "evaluate": (cmd_evaluate, "a2d.evaluate:evaluate_model", "a2d.shortlist:describe", "a2d.recipes.task:evaluate_task",
                 "a2d.data.tasks:data_task"),
    "translate": (cmd_translate, "a2d.translator:load_translator", "a2d.shortlist:describe"),
    "export": (cmd_export, "a2d.export:export"),
    "shortlist": (cmd_shortlist, "a2d.shortlist:write_shortlist"),
    "plot": (cmd_plot, "a2d.curves:plot_training_curves"),
    "plot-alignment": (cmd_plot_alignment, "a2d.analysis:plot_alignment", "a2d.analysis:format_summary"),
    "methods": (cmd_methods, "a2d.methods:METHODS"),
    "config": (cmd_config, "a2d.settings:load_config", "a2d.settings:describe_keys"),
    "demo": (cmd_demo, "a2d.recipes.demo:demo"),
    "reproduce": (cmd_reproduce, "a2d.experiments.runner:reproduce"),
}


def _load(target: str):
    """The object ``"module:name"`` names, its module imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def run_command(args) -> None:
    """Call the handler of ``args.command`` with the arguments and its components."""
    handler, *targets = COMMANDS[args.command]
    handler(args, *(_load(t) for t in targets))


def _run_args(p: argparse.ArgumentParser, teacher: bool) -> None:
    p.add_argument("--data", required=True, help="a prepared data directory (a2d prepare)")
    if teacher:
        p.add_argument("--teacher", help=TEACHER_HELP)
        p.add_argument("--method", help="distillation method (a2d methods); default: the config's, a2d")
    p.add_argument("--preset", help="preset name or YAML file (" + ", ".join(preset_names()) + ")")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue RUN/last with its optimizer, schedule and RNG")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (a2d config --keys)")


TEACHER_HELP = ("the teacher: a run folder (or its best/), or a Hugging Face Marian folder (e.g. an OPUS-MT model "
                "saved with save_pretrained; docs/ship.md)")
BEAM_HELP = "beam size (default: the num_beams the model's folder records, else 5)"


def _decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=6000, help="source tokens per batch (default 6000)")
    p.add_argument("--threads", type=int, default=1, help="CTranslate2 threads, for an exported --model (default 1)")
    p.add_argument("--translators", type=int, default=1, help="CTranslate2 translators decoding batches at once, "
                   "each on --threads threads, for an exported --model (default 1; on N cores, N translators of 1 "
                   "thread decoded a file fastest on the CPU measured: docs/ship.md)")
    p.add_argument("--shortlist", action="store_true", help="decode an exported --model with its lexical shortlist "
                   "(a2d shortlist): the output layer cut to the target pieces the batch's source pieces allow")


def _doc(purpose: str, *examples: str) -> dict:
    """``add_parser`` keywords: the one-line purpose (the list's help and the command's description) and examples."""
    return {"help": purpose, "description": purpose.replace("%%", "%"),
            "epilog": "example:\n" + "\n".join(f"  {e}" for e in examples),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


USUAL_SEQUENCE = """\
the usual sequence (a2d COMMAND --help: each command's options and an example):
  a2d prepare  --corpus multi30k --src de --tgt en --out data/m30k-de-en
  a2d train    --data data/m30k-de-en --preset tiny-teacher --out runs/teacher
  a2d distill  --data data/m30k-de-en --teacher runs/teacher --method a2d --preset tiny-student --out runs/a2d
  a2d evaluate --model runs/a2d --data data/m30k-de-en --split test --out runs/a2d/test.json
  a2d export   --model runs/a2d --out export/a2d-int8 --quantization int8

first time here? `a2d demo` trains No-KD, KD and A2D students of a stored teacher and scores them (under 10 minutes)."""


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", **_doc("prepare a parallel corpus: SentencePiece vocabulary and encoded splits",
                                        "a2d prepare --corpus multi30k --src de --tgt en --out data/m30k-de-en",
                                        "a2d prepare --train-src train.de --train-tgt train.en --valid-src valid.de "
                                        "--valid-tgt valid.en --src de --tgt en --out data/mine"))
    p.add_argument("--corpus", help="a named corpus (multi30k); read from $A2D_DATA_DIR or downloaded")
    p.add_argument("--src", default="de", help="source language (default de)")
    p.add_argument("--tgt", default="en", help="target language (default en)")
    for split in ("train", "valid", "test"):
        for side in ("src", "tgt"):
            p.add_argument(f"--{split}-{side}", help=f"{split} {side} text file (plain or .gz)")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--vocab", help="encode with this SentencePiece model (e.g. a teacher's MODEL/sentencepiece.model) "
                                   "instead of training one; --vocab-size is then not used")
    p.add_argument("--max-train", type=int, help="use only the first N training pairs")
    p.add_argument("--max-len", type=int, default=250, help="drop training pairs longer than this (subwords)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the prepared files of an --out that also holds other files (those are kept)")
    p.add_argument("--tokenizer", metavar="DIR", help="encode with the tokenizer of this model folder (a Hugging Face "
                   "Marian folder, e.g. a downloaded OPUS-MT teacher) instead of training SentencePiece")


def _add_prepare_task(sub) -> None:
    p = sub.add_parser("prepare-task", **_doc(
        "prepare data for another model family: sentence(-pair) classification (BERT) or language modelling (GPT-2, "
        "Llama)",
        "a2d prepare-task classification --glue glue_data/SST-2 --out data/sst2",
        "a2d prepare-task classification --standin multi30k-pairs --out data/m30k-pairs",
        "a2d prepare-task lm --standin multi30k-en --out data/m30k-lm",
        "a2d prepare-task lm --train train.txt --valid valid.txt --family llama --out data/mine"))
    p.add_argument("task", choices=("classification", "lm"))
    p.add_argument("--glue", metavar="DIR", help="a GLUE task folder as GLUE distributes it (train.tsv, dev.tsv)")
    p.add_argument("--glue-task", help="its GLUE task (sst2, cola, mrpc, qqp, qnli, rte, wnli, mnli); default: from "
                   "the folder's name")
    p.add_argument("--standin", help="multi30k-pairs (classification: is the English sentence the German one's "
                   "translation? hard negatives) or multi30k-en (lm: Multi30k's English side)")
    p.add_argument("--train", help="training text, one sentence or document per line (lm)")
    p.add_argument("--valid", help="validation text (lm)")
    p.add_argument("--test", help="test text (lm)")
    p.add_argument("--family", help="bert (classification); gpt2 or llama (lm); default: bert / gpt2")
    p.add_argument("--tokenizer", metavar="DIR", help="encode with this folder's tokenizer (a teacher you bring) "
                   "instead of training one on the training split")
    p.add_argument("--vocab-size", type=int, default=8000, help="vocabulary of a tokenizer trained here (default 8000)")
    p.add_argument("--max-len", type=int, default=128, help="cut examples to this many tokens (default 128)")
    p.add_argument("--max-train", type=int, help="use only the first N training examples")
    p.add_argument("--seed", type=int, default=1, help="the stand-in's draw of negatives (default 1)")
    p.add_argument("--out", required=True)


def _add_training(sub) -> None:
    p = sub.add_parser("train", **_doc("train a model with cross-entropy (a teacher, or a No-KD student)",
                                      "a2d train --data data/m30k-de-en --preset tiny-teacher --out runs/teacher",
                                      "a2d train --data data/m30k-de-en --out runs/teacher --resume"))
    _run_args(p, teacher=False)
    p = sub.add_parser("distill", **_doc("distill a student from a frozen teacher",
                                        "a2d distill --data data/m30k-de-en --teacher runs/teacher --method a2d "
                                        "--preset tiny-student --out runs/a2d"))
    _run_args(p, teacher=True)


def _add_distill_data(sub) -> None:
    p = sub.add_parser("distill-data", **_doc(
        "sequence-level KD data (the teacher's translations of the training set), or with --cache-topk a cache "
        "of its top-K token probabilities for word-level KD",
        "a2d distill-data --teacher runs/teacher --data data/m30k-de-en --out data/m30k-de-en-seqkd",
        "a2d distill --data data/m30k-de-en-seqkd --method seq-kd --preset tiny-student --out runs/seq-kd",
        "a2d distill-data --teacher runs/teacher --data data/m30k-de-en --out cache/top8 --cache-topk 8",
        "a2d distill --data data/m30k-de-en --teacher runs/teacher --method kd --preset tiny-student "
        "--out runs/kd-top8 kd_cache=cache/top8"))
    p.add_argument("--teacher", required=True, help=TEACHER_HELP + "; or its a2d export folder (CTranslate2)")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="the new data directory (with --cache-topk: the cache folder)")
    p.add_argument("--beam", type=int, help=f"beam size of the translations (default {SEQ_KD_BEAM})")
    p.add_argument("--engine", help="what decodes the teacher: hf (Hugging Face generate, the default), ct2-float32 "
                   "or ct2-int8 (CTranslate2; a model folder is exported on the fly, an a2d export folder is taken as "
                   "it is and decoded in its own quantization by default)")
    p.add_argument("--threads", type=int, help="cores to decode on (default: every core): Hugging Face's threads, "
                   "or that many CTranslate2 translators of one thread")
    p.add_argument("--cache-topk", type=int, metavar="K",
                   help="instead of translating, store the teacher's K most probable tokens, their log-probabilities "
                        "and the rest's log-mass (fp32) at every target position of the training set (resumable; "
                        "docs/kd-cache.md)")
    p.add_argument("--kd-temperature", type=float, metavar="T",
                   help="with --cache-topk: the temperature of the cached distributions; must be the kd_temperature "
                        f"of the runs that read the cache (default {CACHE_TEMPERATURE:g})")
    p.add_argument("--cache-attention", action="store_true",
                   help="with --cache-topk: keep the teacher's attention maps too (every head, float16; about 1.2 GB "
                        "for Multi30k and a 6+6-layer, 4-head teacher): A2D then trains without running the teacher")
    p.add_argument("--max-tokens", type=int, help=f"with --cache-topk: padded tokens per teacher batch "
                                                   f"(default {CACHE_MAX_TOKENS})")
    p.add_argument("--shard-size", type=int, help=f"with --cache-topk: examples per shard file "
                                                   f"(default {CACHE_SHARD_SIZE})")


def _add_decoding(sub) -> None:
    p = sub.add_parser("evaluate", **_doc("beam search + sacreBLEU/chrF with a 95%% bootstrap CI",
                                         "a2d evaluate --model runs/a2d --data data/m30k-de-en --split test "
                                         "--out runs/a2d/test.json"))
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--beam", type=int, help=BEAM_HELP)
    p.add_argument("--out", help="write FILE.json and FILE.hyp")
    _decode_args(p)

    p = sub.add_parser("translate", **_doc("translate stdin to stdout, one sentence per line",
                                          'echo "Ein Hund läuft über die Wiese." | a2d translate --model runs/a2d'))
    p.add_argument("--model", required=True)
    p.add_argument("--beam", type=int, help=BEAM_HELP)
    _decode_args(p)

    p = sub.add_parser("export", **_doc("write a CTranslate2 model (ctranslate2's converter), tokenizer beside it",
                                       "a2d export --model runs/a2d --out export/a2d-int8 --quantization int8",
                                       'echo "Ein Hund rennt." | a2d translate --model export/a2d-int8'))
    p.add_argument("--model", required=True, help="a run folder, its best/ or last/, or a Hugging Face Marian folder")
    p.add_argument("--out", required=True, help="the folder to write (must not exist)")
    p.add_argument("--quantization", default=QUANTIZATIONS[0], choices=QUANTIZATIONS)

    p = sub.add_parser("shortlist", **_doc(
        "write a lexical shortlist into a CTranslate2 export (its vmap.txt), for faster decoding with --shortlist",
        "a2d shortlist --data data/m30k-de-en --model export/a2d-int8",
        'echo "Ein Hund rennt." | a2d translate --model export/a2d-int8 --shortlist'))
    p.add_argument("--data", required=True, help="a prepared data directory of the model's vocabulary (its train "
                                                 "split is counted)")
    p.add_argument("--model", required=True, help="an a2d export folder; vmap.txt and a2d_shortlist.json are "
                                                  "written (replaced) there")
    p.add_argument("--top-n", type=int, default=SHORTLIST_TOP_N, metavar="N", help="target pieces per source piece, "
                   f"by Dice co-occurrence over the training pairs (default {SHORTLIST_TOP_N})")
    p.add_argument("--frequent", type=int, default=SHORTLIST_FREQUENT, metavar="K", help="the K most frequent "
                   f"target pieces, always allowed with the special tokens (default {SHORTLIST_FREQUENT})")


def _add_plots(sub) -> None:
    p = sub.add_parser("plot", **_doc("training/validation curves of one or more runs in one PNG",
                                     "a2d plot runs/teacher runs/a2d --out curves.png"))
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("--out", required=True)

    p = sub.add_parser("plot-alignment", **_doc("heatmaps of the learned AAM weights (the paper's Figure 2)",
                                               "a2d plot-alignment --run runs/a2d --out alignment.png"))
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)


def _add_others(sub) -> None:
    sub.add_parser("methods", **_doc("list the distillation methods", "a2d methods"))

    p = sub.add_parser("config", **_doc("print a preset resolved with overrides, or every key (--keys)",
                                       "a2d config --preset tiny-student lambda_att=0.5", "a2d config --keys"))
    p.add_argument("--preset")
    p.add_argument("--keys", action="store_true")
    p.add_argument("overrides", nargs="*", metavar="key=value")

    p = sub.add_parser("demo", **_doc("train a No-KD, a KD and an A2D student of a trained Multi30k De-En teacher "
                                     "and score all four (under 10 minutes on 2 cores)", "a2d demo --out demo"))
    p.add_argument("--out", default="demo")
    p.add_argument("--steps", type=int, default=DEMO_STEPS,
                   help=f"updates per student (default {DEMO_STEPS}, about 1.2 epochs)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--train-teacher", action="store_true",
                   help="train a tiny teacher first (5 epochs) instead of using the stored one")
    p.add_argument("--max-train", type=int, help="training pairs to use (default: all 29000)")
    p.add_argument("--one-at-a-time", action="store_true", help="train the students one after the other on all "
                                                                 "cores, not side by side on one core each")

    p = sub.add_parser("reproduce", **_doc(
        "train, score and report a grid of teachers and students (benchmarks/grids/)",
        "a2d reproduce benchmarks/grids/tiny-r3.yaml --dry-run",
        "a2d reproduce benchmarks/grids/tiny-r3.yaml --only de-en/a2d-s1"))
    reproduce.add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (light: nothing a command runs is imported here)."""
    parser = argparse.ArgumentParser(prog="a2d", description="Align-to-Distill: distil translation Transformers.",
                                     epilog=USUAL_SEQUENCE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_prepare, _add_prepare_task, _add_training, _add_distill_data, _add_decoding, _add_plots, _add_others):
        add(sub)
    return parser


#: The option of a component's parameter (:class:`a2d.errors.BadValue`) where it is not ``--`` and its name with
#: ``-`` for ``_``.
_FLAGS = {"data_dir": "--data", "out_dir": "--out", "model_path": "--model", "teacher_path": "--teacher",
          "src_lang": "--src", "tgt_lang": "--tgt", "topk": "--cache-topk", "temperature": "--kd-temperature",
          "attention": "--cache-attention"}


@functools.cache
def _options() -> frozenset[str]:
    """Every command's options (``--data``, ...)."""
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
    return frozenset(flag for p in commands.values() for flag in p._option_string_actions if flag.startswith("--"))


def _flag(option: str, *value) -> str:
    """A component's parameter as the command line writes it: its option, then the value (none for a switch); a
    parameter that is no option (a config key) as an override, ``key=value``."""
    flag = _FLAGS.get(option, "--" + option.replace("_", "-"))
    if flag not in _options():
        return option if not value else f"{option}={value[0]}"
    if not value or value[0] is True:
        return flag
    shown = f"{value[0]:g}" if isinstance(value[0], float) else str(value[0])
    return f"{flag} {shlex.quote(shown)}"


#: How the command line words a component's typed error (:mod:`a2d.errors`): its options, the command to run first.
_WORDING = {
    OutputExists: lambda e: (f"--out {e.path}: {e.what}; "
                             f"{e.remedy('use --resume to continue it', '--overwrite', '--out')}"),
    CannotCreate: lambda e: f"--out {e.path}: cannot create ({e.reason})",
    OutputUnwritable: lambda e: f"--out {e}",
    NothingToResume: lambda e: (f"--resume: {e.path} has no last/ checkpoint to resume from (found "
                                f"{', '.join(e.found)}); choose another --out"),
    ResumeMismatch: lambda e: f"--resume {e.path}: {e.describe('--data', 'with another --out')}",
    UnknownMethod: lambda e: f"--method {e.name}: unknown method (choose from {', '.join(e.choices)})",
    TeacherRequired: lambda e: f"method {e.method} needs a teacher; give --teacher RUN",
    NotDistilledData: lambda e: (
        f"--method {e.method} trains on the teacher's translations, but {e.data_dir or 'the data directory'} is not a "
        "distilled one (no distilled_from in meta.json): run `a2d distill-data --teacher RUN --data DIR --out DIR2` "
        "and give --data DIR2"),
    NotAnAlignmentRun: lambda e: f"{e}; run a2d distill --method a2d to make one",
    BadValue: lambda e: e.describe(_flag, " "),
}


def _message(e: Exception) -> str:
    """A component's error in the command line's terms (:data:`_WORDING`); other errors say what they say."""
    for cls in type(e).__mro__:
        if cls in _WORDING:
            return _WORDING[cls](e)
    return str(e)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after the options (argparse stops a positional list at the first option)
    if extra and hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # large CPU tensors reused, not re-mapped per step: the command's setting; the library leaves the
    # allocator of a program that calls it alone (a2d.allocator)
    keep_large_allocations()
    try:
        run_command(args)
    except (UserError, ConfigError) as e:
        print(f"a2d: error: {_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a training run says where it stopped and that last/ is saved
        print("a2d: interrupted" + (f" by {e}" if str(e) else ""), file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``a2d export``: a model folder to a CTranslate2 model, with the ``ctranslate2`` package's own converter.

The conversion is ``ctranslate2.converters.TransformersConverter`` (its Marian/BART weight mapping, its
quantization). One behaviour is switched for Marian models: its stock Marian loader assumes OPUS-MT's layout
(``<pad>`` is the last id and the decoder starts from a zero vector in its place) and drops that last row. a2d's
models start the decoder from ``<s>`` (id 2) and keep ``<pad>`` at id 0, so the export uses the same package's BART
mapping for Marian's layers (``_MarianAsHuggingFace``): the decoder starts from the embedding of
``decoder_start_token_id`` and every id is kept, which is what Hugging Face's ``generate`` computes for any Marian
folder, a2d's or the hub's; and each side gets its own number of attention heads (the stock mapping gives the
decoder the encoder's). The model works with a plain ``ctranslate2.Translator`` as ``a2d translate`` does: its
``config.json`` says ``add_source_eos`` (CTranslate2 closes the source with ``</s>``), and ids the model never
generates (``bad_words_ids`` in its generation config, OPUS-MT's ``<pad>``) get an output bias of
:data:`SUPPRESSED_BIAS` (CTranslate2 has no model setting for suppressed tokens, only the ``suppress_sequences``
argument). The beam and the positions have no place in a CTranslate2 model: ``README.md`` gives them as the
arguments of ``translate_batch``. A folder with two vocabularies (``target_vocab.json``, as some OPUS-MT models)
gets CTranslate2's source and target vocabularies from ``vocab.json`` and ``target_vocab.json``.

An exported folder::

    model.bin, config.json, shared_vocabulary.json   CTranslate2's model (source_vocabulary.json and
                                                     target_vocabulary.json for two vocabularies)
    source.spm, target.spm, vocab.json, ...          the tokenizer (and sentencepiece.model for a2d's own)
    a2d_export.json                                  what it was made from, quantization, decoding settings
    README.md                                        the lines of Python that use it without a2d
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch

import a2d
from a2d.config import DEFAULT_BEAM
from a2d.defaults import QUANTIZATIONS
from a2d.errors import BadValue, OutputExists
from a2d.models import load_model, recorded_beam, resolve_model_dir
from a2d.readme import ct2_readme, write_readme
from a2d.rundir import BEST, LAST, RunDir
from a2d.utils import UserError, atomic_dir, check_writable_parent, sha256_file

EXPORT_FILE = "a2d_export.json"
#: The output bias of an id the model never generates: its probability is exactly 0 after the softmax in float32
#: and float16 (as CTranslate2's ``suppress_sequences`` makes it) while the number stays finite in every dtype.
SUPPRESSED_BIAS = -1e4


def is_exported(folder: Path | str) -> bool:
    return (Path(folder) / EXPORT_FILE).is_file() and (Path(folder) / "model.bin").is_file()


def read_settings(folder: Path | str) -> dict:
    """The ``a2d_export.json`` of an exported folder: what it was made from and how to decode it as Hugging Face
    does (``max_position_embeddings``, ``suppress_tokens``, ``forced_eos``)."""
    folder = Path(folder)
    if not is_exported(folder):
        raise UserError(f"{folder}: not an a2d export (no {EXPORT_FILE} and model.bin)")
    try:
        settings = json.loads((folder / EXPORT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{folder / EXPORT_FILE}: not valid JSON ({e})") from None
    if not isinstance(settings, dict):
        raise UserError(f"{folder / EXPORT_FILE}: not written by a2d export (not a JSON object); export the model "
                        "again")
    return settings


def require_ctranslate2():
    try:
        import ctranslate2
    except ImportError:
        raise UserError("CTranslate2 is not installed: pip install 'align-to-distill[export]'") from None
    return ctranslate2


def check_quantization(quantization: str, device: str = "cpu") -> None:
    """Refuse a quantization this machine's CTranslate2 cannot run, naming the ones it can."""
    ctranslate2 = require_ctranslate2()

    if quantization not in QUANTIZATIONS:
        raise BadValue("quantization", quantization, f"choose from {', '.join(QUANTIZATIONS)}")
    supported = sorted(ctranslate2.get_supported_compute_types(device))
    if quantization not in supported:
        raise BadValue("quantization", quantization, f"this machine's CTranslate2 ({device}) cannot run it (it "
                       f"supports {', '.join(supported)})")


def _loader_class():
    from ctranslate2.converters import transformers as ct2t

    class _MarianAsHuggingFace(ct2t.MarianMTLoader):
        """Marian as Hugging Face runs it: start from ``decoder_start_token_id``'s embedding, keep every id."""

        def get_model_spec(self, model):
            # BartLoader.get_model_spec, with each side's own number of heads (it gives both the encoder's)
            from ctranslate2.specs import transformer_spec

            config = model.config
            if config.activation_function not in ct2t._SUPPORTED_ACTIVATIONS:
                raise ValueError(f"activation {config.activation_function!r} is not supported by CTranslate2")
            side = dict(pre_norm=False, activation=ct2t._SUPPORTED_ACTIVATIONS[config.activation_function],
                        layernorm_embedding=False)  # Marian is post-norm, no embedding layer norm
            spec = transformer_spec.TransformerSpec(
                transformer_spec.TransformerEncoderSpec(config.encoder_layers, config.encoder_attention_heads, **side),
                transformer_spec.TransformerDecoderSpec(config.decoder_layers, config.decoder_attention_heads, **side))
            self.set_encoder(spec.encoder, model.model.encoder)
            self.set_decoder(spec.decoder, model.model.decoder)
            self.set_linear(spec.decoder.projection, model.lm_head)
            bias = getattr(model, "final_logits_bias", None)
            bias = bias.detach().squeeze(0).clone() if bias is not None else torch.zeros(model.lm_head.out_features)
            bias[suppressed_ids(model)] = SUPPRESSED_BIAS  # never generated, without suppress_sequences
            self.order, self.shared = front_order(model), shares_vocabulary(model)
            if self.order is not None:  # the pieces CTranslate2 maps under a shortlist first (front_order)
                index = torch.tensor(self.order)
                spec.decoder.embeddings.weight = spec.decoder.embeddings.weight.detach()[index]
                spec.decoder.projection.weight = spec.decoder.projection.weight.detach()[index]
                bias = bias[index]
                if self.shared:  # one vocabulary: the source side in the same order (still one embedding stored)
                    for embeddings in spec.encoder.embeddings:
                        embeddings.weight = embeddings.weight.detach()[index]
            if bias.nonzero().numel() != 0:
                spec.decoder.projection.bias = bias
            return spec

        def set_config(self, config, model, tokenizer):
            ct2t.BartLoader.set_config(self, config, model, tokenizer)
            config.bos_token = tokenizer.bos_token or config.decoder_start_token
            config.add_source_eos = True  # Marian's encoder reads the source closed with </s>

        def set_decoder(self, spec, decoder):
            ct2t.BartLoader.set_decoder(self, spec, decoder)

        def get_vocabulary(self, model, tokenizer):
            # the source side is vocab.json, the target side target_vocab.json where the folder has one (OPUS-MT's
            # two-vocabulary models); each as long as its embedding
            rows = model.model.decoder.embed_tokens.weight.shape[0]
            if model.lm_head.weight.shape[0] != rows:
                raise ValueError(f"the output layer has {model.lm_head.weight.shape[0]} rows and the decoder's "
                                 f"embedding {rows}; CTranslate2 needs one target vocabulary for both")
            target = tokenizer.target_encoder if tokenizer.separate_vocabs else tokenizer.get_vocab()
            source_rows = model.model.encoder.embed_tokens.weight.shape[0]
            source, target = _tokens(tokenizer.get_vocab(), source_rows), _tokens(target, rows)
            if self.order is not None:
                target = [target[i] for i in self.order]
                if self.shared:
                    source = [source[i] for i in self.order]
            return source, target

        def set_vocabulary(self, spec, tokens):
            source, target = tokens
            spec.register_source_vocabulary(source)
            spec.register_target_vocabulary(target)  # one list for both when they are equal: shared_vocabulary.json

    return _MarianAsHuggingFace


def shares_vocabulary(model) -> bool:
    """Whether the source and target sides are one vocabulary with one embedding (a2d's models, OPUS-MT's joint
    ones)."""
    config = model.config
    return bool(getattr(config, "share_encoder_decoder_embeddings", True)) and (
        model.model.encoder.embed_tokens.weight.shape[0] == model.lm_head.weight.shape[0])


def front_ids(model) -> list[int]:
    """The target ids CTranslate2 maps into a batch's shortened output layer under a vocabulary map: the decoder's
    start token, ``</s>``, ``<pad>`` and the suppressed ids."""
    config, rows = model.config, model.lm_head.weight.shape[0]
    ids = (config.decoder_start_token_id, config.eos_token_id, config.pad_token_id, *suppressed_ids(model))
    return sorted({int(i) for i in ids if i is not None and 0 <= int(i) < rows})


def ct2_order(front: list[int], size: int) -> list[int]:
    """CTranslate2's id order of an export that moved ``front`` first (``order[j]``: the model's id at CTranslate2's
    id ``j``): ``front``, then the other ids of ``range(size)`` in the model's order."""
    moved = set(front)
    return front + [i for i in range(size) if i not in moved]


def moved_ids(model) -> list[int] | None:
    """The :func:`front_ids` the export moves first; None where they are first already (a2d's models)."""
    front = front_ids(model)
    return None if front == list(range(len(front))) else front


def front_order(model) -> list[int] | None:
    """The order of the target ids in the export (:func:`ct2_order`): the :func:`front_ids` first, then the rest in
    the model's order; None where they are first already (a2d's models).

    Under a vocabulary map CTranslate2 (4.x) keeps the shortened-layer position these pieces had in a translator's
    first batch for every later batch (``Decoder::update_output_layer`` adds to its id map without clearing it).
    Ahead of every other piece, and always allowed by the map, their positions are the same in every batch, so the
    defect cannot act; in OPUS-MT's layout (``<pad>``, the decoder's start token, is the last id) it gives wrong
    translations after the first batch. Pieces, not ids, cross the CTranslate2 interface, so the order is invisible
    to a2d and to plain ``ctranslate2`` users; ``a2d_export.json`` records the moved ids (``front_ids``)."""
    front = moved_ids(model)
    return None if front is None else ct2_order(front, model.lm_head.weight.shape[0])


def suppressed_ids(model) -> list[int]:
    """The ids ``model``'s generation config bars (one-token ``bad_words_ids``: OPUS-MT's ``<pad>``)."""
    return sorted({ids[0] for ids in (model.generation_config.bad_words_ids or []) if len(ids) == 1})


def _tokens(vocab: dict[str, int], rows: int) -> list[str]:
    """The pieces of ``vocab`` (piece -> id) in id order, one per embedding row; rows no piece maps to (never
    produced by the tokenizer) get placeholder names, ids past ``rows`` are dropped."""
    pieces = {int(i): piece for piece, i in vocab.items()}
    return [pieces.get(i, f"<a2d_unused_{i}>") for i in range(rows)]


@contextlib.contextmanager
def _marian_as_hugging_face():
    """Convert Marian folders with :func:`_loader_class`'s loader: it replaces the stock one in ctranslate2's private
    ``_MODEL_LOADERS`` for the conversion (pyproject caps ctranslate2's version; tests/test_ctranslate2_guard.py
    checks what is used)."""
    from ctranslate2.converters import transformers as ct2t

    loaders = ct2t._MODEL_LOADERS
    saved = loaders.get("MarianConfig")
    loaders["MarianConfig"] = _loader_class()()
    try:
        yield
    finally:
        if saved is None:
            loaders.pop("MarianConfig", None)
        else:
            loaders["MarianConfig"] = saved


def _staged(model_dir: Path, vocab, stage: Path) -> Path:
    """A folder the converter can read with AutoTokenizer: the model's files linked, the tokenizer's written."""
    for path in model_dir.iterdir():
        if path.is_file() and (path.suffix == ".safetensors" or path.name in ("config.json", "generation_config.json")):
            os.symlink(path.resolve(), stage / path.name)
    vocab.save(stage, model_folder=True)
    return stage


def export(model_path: Path | str, out: Path | str, quantization: str = "int8", log=print) -> dict:
    """Convert the model folder (or run folder) ``model_path`` into a CTranslate2 model at ``out``."""
    ctranslate2 = require_ctranslate2()
    from ctranslate2.converters import TransformersConverter

    out, model_path = Path(out), Path(model_path)
    if out.exists():
        raise OutputExists(out)  # never overwritten
    check_writable_parent(out)
    check_quantization(quantization)
    run = RunDir(model_path)
    if not (model_path / "config.json").exists() and not run.has_model(BEST) and run.has_model(LAST):
        raise BadValue("model_path", model_path, "the run has no best/ yet (no validated model: it is still training, "
                       "or stopped before its first validation); give {model_path} to export its latest, "
                       "unvalidated weights", model_path=run.last)
    model_dir = resolve_model_dir(model_path)
    model, vocab = load_model(model_dir)  # the clear errors for a folder that is not a model (or not Marian)
    positions = int(model.config.max_position_embeddings)
    settings = {
        "format": 2,
        "quantization": quantization,
        "source": str(model_dir.resolve()),
        "source_sha256": sha256_file(model_dir / "model.safetensors"),
        "max_position_embeddings": positions,
        # format 2: CTranslate2 closes the source with </s> (config.json's add_source_eos) and the output layer's
        # bias bars these pieces; a2d passes them to suppress_sequences too, as for a format 1 export
        "suppress_tokens": vocab.target_pieces(suppressed_ids(model)),
        "beam": recorded_beam(model_dir) or DEFAULT_BEAM,
        # Hugging Face ends a hypothesis that reaches the length limit with a forced </s>, one token early
        "forced_eos": model.generation_config.forced_eos_token_id is not None,
        # CTranslate2's target ids: these model ids first, then the rest in order (front_order; absent: the model's)
        "front_ids": moved_ids(model),
        "shared_vocabulary": shares_vocabulary(model),
        "ctranslate2_version": ctranslate2.__version__,
        "a2d_version": a2d.__version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    del model
    with tempfile.TemporaryDirectory(prefix=".a2d-export-", dir=out.parent if out.parent.exists() else None) as s:
        stage = _staged(model_dir, vocab, Path(s))
        with atomic_dir(out) as tmp, _marian_as_hugging_face():
            try:
                with warnings.catch_warnings():  # MarianTokenizer's "Recommended: pip install sacremoses"
                    warnings.simplefilter("ignore")
                    TransformersConverter(str(stage)).convert(str(tmp), quantization=quantization, force=True)
            except (ValueError, RuntimeError, NotImplementedError, KeyError) as e:
                raise UserError(f"{model_dir}: CTranslate2 cannot convert it ({str(e).splitlines()[0]})") from None
            vocab.save(tmp, model_folder=True, max_length=positions)
            if vocab.layout:  # a brought tokenizer: the model's ids, as config.json is CTranslate2's now
                (tmp / "a2d_tokenizer.json").write_text(json.dumps(vocab.layout, indent=2) + "\n", encoding="utf-8")
            (tmp / EXPORT_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
            write_readme(tmp, ct2_readme(out, settings["beam"], positions, quantization, vocab.target_pieces(
                [vocab.unk_id])[0], settings["suppress_tokens"]))
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    log(f"wrote {out}: CTranslate2 {quantization} model, {size / 2**20:.1f} MiB")
    return settings


def folder_size(folder: Path | str, weights_only: bool = False) -> int:
    """Bytes of the files in ``folder`` (``weights_only``: the weights file alone)."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file()]
    if weights_only:
        files = [p for p in files if p.name in ("model.bin", "model.safetensors")]
    return sum(p.stat().st_size for p in files)


__all__ = ["export", "is_exported", "read_settings", "check_quantization", "QUANTIZATIONS", "EXPORT_FILE",
           "folder_size"]

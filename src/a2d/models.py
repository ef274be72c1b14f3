"""Models: the fairseq-style Transformer the paper used, built as a Hugging Face ``MarianMTModel``.

Marian's layers are post-norm with sinusoidal positions; with ``scale_embedding`` and shared, tied
embeddings this is fairseq's ``transformer`` (the architecture of the paper's teachers and students).
A checkpoint folder is a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``) plus
``sentencepiece.model`` and the run's ``config.yaml``; ``MarianMTModel.from_pretrained`` loads it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from transformers import MarianConfig, MarianMTModel
from transformers.utils import logging as hf_logging

from a2d.config import DEFAULT_BEAM, Config
from a2d.data.vocab import BOS, EOS, PAD, Vocabulary
from a2d.rundir import resolve_model_dir  # a2d.models.resolve_model_dir, as before
from a2d.tokenizer import GENERATION_KEYS
from a2d.utils import UserError

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


def marian_config(cfg: Config, vocab_size: int, layout: dict | None = None) -> MarianConfig:
    """The model ``cfg`` describes; ``layout`` (a brought tokenizer's, :mod:`a2d.tokenizer`) replaces a2d's
    own special ids, vocabulary sizes and embedding sharing by the teacher's (its generation settings are
    :func:`build_model`'s)."""
    config = MarianConfig(
        vocab_size=vocab_size, d_model=cfg.d_model,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.encoder_attention_heads, decoder_attention_heads=cfg.decoder_attention_heads,
        encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim, activation_function=cfg.activation_function,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
        max_position_embeddings=cfg.max_positions, scale_embedding=True, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
        decoder_start_token_id=BOS, forced_eos_token_id=None, init_std=cfg.d_model ** -0.5,
    )
    for key, value in (layout or {}).items():
        if key not in GENERATION_KEYS:
            setattr(config, key, value)
    return config


def build_model(cfg: Config, vocab_size: int, seed: int | None = None, layout: dict | None = None) -> MarianMTModel:
    """A freshly initialised model of the shape ``cfg`` describes (``layout``: see :func:`marian_config`; its
    generation settings, e.g. the teacher's ``bad_words_ids``, go to the model's generation config).

    The generation config records how a2d decodes (:mod:`a2d.translator`): ``num_beams`` (``cfg.num_beams``, else
    :data:`~a2d.config.DEFAULT_BEAM`) with ``early_stopping``, at most ``max_positions`` tokens; so ``generate()``
    without arguments gives ``a2d translate``'s beam output."""
    if seed is not None:
        torch.manual_seed(seed)
    model = MarianMTModel(marian_config(cfg, vocab_size, layout))
    if cfg.init == "fairseq":
        fairseq_init(model)
    model.generation_config.max_length = cfg.max_positions
    beams = cfg.num_beams or DEFAULT_BEAM
    model.generation_config.num_beams = beams
    model.generation_config.early_stopping = beams > 1  # (a beam-only flag: set with num_beams 1, saving refuses it)
    for key in GENERATION_KEYS:
        if key in (layout or {}):
            setattr(model.generation_config, key, layout[key])
    return model


def fairseq_init(model: MarianMTModel) -> MarianMTModel:
    """Re-initialise ``model`` the way fairseq's ``transformer`` does (``init=fairseq``, the default).

    Every ``nn.Linear`` gets Xavier-uniform weights and zero biases, the attention's q, k and v
    projections with gain ``1/sqrt(2)`` (fairseq's ``MultiheadAttention`` with equal q/k/v sizes); the
    shared embedding is ``N(0, d_model^-0.5)`` with the padding row zero; layer norms stay 1 and 0 and
    the sinusoidal position tables are left alone. Hugging Face's scheme (``init=normal``) draws every
    linear from ``N(0, d_model^-0.5)`` as well, which makes the FFN's and attention's outputs larger at
    the start than fairseq's. Measured on Multi30k De-En (``benchmarks/results/init-de-en-cpu.md``): with
    it the 4+4 ``tiny-teacher`` spent four epochs as a language model that ignored the source (valid
    BLEU 7.6 after epoch 4); with this one it reached 24.8.
    """
    d = model.config.d_model
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and module is not model.lm_head:
                gain = 2 ** -0.5 if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj") else 1.0
                torch.nn.init.xavier_uniform_(module.weight, gain=gain)
                if module.bias is not None:
                    module.bias.zero_()
        emb = model.get_input_embeddings()
        torch.nn.init.normal_(emb.weight, mean=0.0, std=d ** -0.5)
        emb.weight[model.config.pad_token_id].zero_()
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Learned parameters, counting tied embeddings once and leaving out the fixed sinusoidal position tables.

    Counts a frozen teacher's weights too (only the position tables are skipped, by name).
    """
    seen, total = set(), 0
    for name, p in model.named_parameters():
        if "embed_positions" not in name and id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def load_model(path: Path | str, attn_implementation: str | None = None) -> tuple[MarianMTModel, Vocabulary]:
    """Load a checkpoint folder (``RUN``, ``RUN/best`` or ``RUN/last``) or a Hugging Face Marian folder, and
    its tokenizer (:meth:`a2d.data.vocab.Vocabulary.load`).

    Every command that reads a model goes through here. The weights must fit ``config.json`` exactly: a tensor the
    config asks for and the file lacks, one the file has and the config does not know, or one of another shape
    is a one-line :class:`UserError` naming the folder and the first of them (Hugging Face's own loading report;
    it would otherwise fill them with random values, and a2d keeps its log quiet). Tensors the model derives
    rather than stores (an output layer tied to the embedding, the sinusoidal position tables, a zero
    ``final_logits_bias``) are not asked for."""
    path = resolve_model_dir(path)
    check_safetensors(path)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        model, info = MarianMTModel.from_pretrained(path, use_safetensors=True, output_loading_info=True,
                                                    ignore_mismatched_sizes=True, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as e:
        raise UserError(f"{path}: cannot load the model ({str(e).splitlines()[0]})") from None
    check_fit(path, info["missing_keys"], info["unexpected_keys"], info["mismatched_keys"], info["error_msgs"])
    return freeze_positions(model), Vocabulary.load(path)


def check_fit(folder: Path | str, missing=(), unexpected=(), mismatched=(), errors=(), model: str = "its config.json",
              cause: str = "damaged, or its config.json comes from another model") -> None:
    """Refuse weights that do not fit the model ``model`` describes: one line naming ``folder`` and the first few
    offending tensors. ``mismatched`` holds ``(name, shape in the weights, shape in the model)``; ``errors``
    other loading errors."""
    if not (missing or unexpected or mismatched or errors):
        return
    parts = []
    for what, names in (("missing from the weights", sorted(missing, key=_order)),
                        ("in the weights that the model has no place for", sorted(unexpected, key=_order))):
        if names:
            parts.append(f"{len(names)} tensor(s) {what}: {_first(names, ', ')}")
    if mismatched:
        shown = [f"{name} {_shape(stored)} in the weights, {_shape(wanted)} in the model"
                 for name, stored, wanted in sorted(mismatched, key=lambda m: _order(m[0]))]
        parts.append(f"{len(shown)} tensor(s) of another shape: {_first(shown, ' / ')}")
    if errors:
        parts.append(str(errors[0]).splitlines()[0])
    raise UserError(f"{folder}: the weights do not match {model}: {'; '.join(parts)} ({cause})")


def _order(name: str) -> tuple:
    """Tensors outside the layers first (the embeddings tell a size apart), then ``layers.2`` before ``layers.10``."""
    return ".layers." in name, [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _first(items: list[str], sep: str, n: int = 3) -> str:
    return sep.join(items[:n]) + (f"{sep}..." if len(items) > n else "")


def _shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape) or "scalar"


def recorded_beam(folder: Path | str) -> int | None:
    """The ``num_beams`` a model folder's ``generation_config.json`` records (None where it records none: an older
    a2d folder, or one without that file)."""
    path = Path(folder) / "generation_config.json"
    try:
        value = json.loads(path.read_text(encoding="utf-8")).get("num_beams") if path.is_file() else None
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path}: not a generation config ({e})") from None
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise UserError(f"{path}: num_beams={value!r} is not a beam size (an integer >= 1)")
    return value


def check_safetensors(path: Path) -> None:
    """Weights are read from safetensors only, never from pickle (``pytorch_model.bin`` can run code)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        pickled = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt*")]
        found = f" (it has {', '.join(sorted(pickled))}: a pickle, which a2d never loads)" if pickled else ""
        raise UserError(f"{path}: no model.safetensors{found}; save the model with "
                        "save_pretrained(safe_serialization=True)")
    for file in files:
        try:
            with safe_open(file, framework="pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise UserError(f"{file}: damaged or truncated ({str(e).splitlines()[0]})") from None


def freeze_positions(model: MarianMTModel) -> MarianMTModel:
    """Sinusoidal position tables are constants; ``from_pretrained`` would otherwise make them trainable."""
    for side in (model.model.encoder, model.model.decoder):
        side.embed_positions.weight.requires_grad_(False)
    return model


def load_weights(model: MarianMTModel, folder: Path | str) -> MarianMTModel:
    """Load ``folder/model.safetensors`` into an already built ``model`` of the same shape (used when resuming)."""
    path = Path(folder) / "model.safetensors"
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"{path}: cannot be read ({str(e).splitlines()[0] if str(e) else 'damaged'})") from None
    own = model.state_dict()
    derived = {"lm_head.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
               "model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"}
    check_fit(folder, missing=set(own) - set(state) - derived, unexpected=set(state) - set(own),
              mismatched=[(k, v.shape, own[k].shape) for k, v in state.items() if k in own and v.shape != own[k].shape],
              model="this run's model", cause="damaged, or the run's settings changed")
    model.load_state_dict(state, strict=False)
    model.tie_weights()
    return model


def use_attention_maps(model: MarianMTModel) -> None:
    """Switch to the eager attention kernel, the one that returns per-head probabilities."""
    model.set_attn_implementation("eager")

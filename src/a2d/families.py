"""Model families behind one small interface: what a distillation method needs from a model.

A method needs two things from a model: the attention kinds it has (with their maps and masks) and its
output logits; some baselines also read hidden states or a layer's value projection. A :class:`Family`
gives them for one kind of Hugging Face model:

* ``marian``: encoder-decoder translation (``MarianMTModel``): ``enc_self``, ``dec_self`` and ``dec_cross``;
  token logits.
* ``bert``: encoder-only sequence classifiers (``BertForSequenceClassification``, the paper's Table 6):
  ``enc_self``; class logits.
* ``gpt2`` and ``llama``: decoder-only causal language models (``GPT2LMHeadModel``, ``LlamaForCausalLM``,
  the paper's future work): causal self-attention, read as ``dec_self``; next-token logits.

Methods see every family the same way (:class:`Shape`, :meth:`Family.outputs`, :meth:`Family.method_batch`):
the encoder-decoder's field names (``encoder_attentions``, ``decoder_hidden_states``...), with the stacks a
family lacks absent. The AAM, the attention KL and the methods therefore stay family-agnostic; a method that
needs a kind or a stack the family lacks refuses with one line (:func:`check_kinds`).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel, LlamaConfig,
                          LlamaForCausalLM, MarianMTModel)

from a2d.attention import KINDS
from a2d.errors import UserError

#: The stacks of layers a model may have, and the attention kind of each stack's self-attention.
SIDES = ("encoder", "decoder")
SELF_KIND = {"encoder": "enc_self", "decoder": "dec_self"}
#: The tasks a family serves (a prepared data folder's ``meta.json`` ``task``).
TASKS = ("translation", "classification", "lm")


@dataclass(frozen=True)
class Shape:
    """What the methods read of a model's config, in one vocabulary for every family.

    ``sides``: the stacks the model has; ``kinds``: its attention kinds; layer and head counts per stack (0 for a
    stack it lacks); ``d_model`` its width; ``attention_dropout`` the dropout on its attention probabilities.
    """

    family: str
    sides: tuple[str, ...]
    kinds: tuple[str, ...]
    encoder_layers: int
    decoder_layers: int
    encoder_attention_heads: int
    decoder_attention_heads: int
    d_model: int
    attention_dropout: float

    def layers_heads(self, kind: str) -> tuple[int, int]:
        """``(layers, heads per layer)`` of the stack that holds attention ``kind``."""
        side = "encoder" if kind == "enc_self" else "decoder"
        return int(getattr(self, f"{side}_layers")), int(getattr(self, f"{side}_attention_heads"))


class Family:
    """One kind of Hugging Face model. Subclasses set the class attributes and :meth:`shape`."""

    name = ""
    task = ""
    model_class: type = nn.Module
    model_types: tuple[str, ...] = ()  # the config.json model_type values it reads
    sides: tuple[str, ...] = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        return KINDS if self.sides == SIDES else tuple(SELF_KIND[s] for s in self.sides)

    def shape(self, config) -> Shape:
        raise NotImplementedError

    def build_config(self, cfg, vocab_size: int, special: dict, num_labels: int = 0):
        """The Hugging Face config of a fresh model of the shape ``cfg`` (an :class:`a2d.config.Config`) describes."""
        raise NotImplementedError

    def build(self, cfg, vocab_size: int, special: dict, num_labels: int = 0, seed: int | None = None):
        if seed is not None:
            torch.manual_seed(seed)
        return self.model_class(self.build_config(cfg, vocab_size, special, num_labels))

    def inputs(self, batch: dict) -> dict:
        """The keyword arguments the model's forward pass takes from one of a2d's batches."""
        return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}

    def method_batch(self, batch: dict) -> dict:
        """The batch as the methods read it (:mod:`a2d.attention`'s masks, ``labels`` at the logits' positions)."""
        return batch

    def outputs(self, out):
        """The forward pass's output with the encoder-decoder's field names (:mod:`a2d.attention`)."""
        return out

    def value_projection(self, model, side: str) -> nn.Linear:
        """The last layer's self-attention value projection of stack ``side`` (MiniLM's value relations)."""
        raise NotImplementedError


def _unwrap(model):
    return getattr(model, "module", model)  # DDP / accelerate wrapper


class Marian(Family):
    name, task, model_class, model_types, sides = "marian", "translation", MarianMTModel, ("marian",), SIDES

    def shape(self, config) -> Shape:
        return Shape(self.name, self.sides, self.kinds, int(config.encoder_layers), int(config.decoder_layers),
                     int(config.encoder_attention_heads), int(config.decoder_attention_heads), int(config.d_model),
                     float(getattr(config, "attention_dropout", 0.0) or 0.0))

    def value_projection(self, model, side):
        model = _unwrap(model)
        stack = model.get_encoder() if side == "encoder" else model.get_decoder()
        return stack.layers[-1].self_attn.v_proj


class Bert(Family):
    """BERT-style sequence classifiers: one encoder stack, class logits ``(B, num_labels)``, labels ``(B,)``."""

    name, task, model_class, model_types, sides = ("bert", "classification", BertForSequenceClassification,
                                                   ("bert",), ("encoder",))

    def shape(self, config) -> Shape:
        return Shape(self.name, self.sides, self.kinds, int(config.num_hidden_layers), 0,
                     int(config.num_attention_heads), 0, int(config.hidden_size),
                     float(config.attention_probs_dropout_prob or 0.0))

    def build_config(self, cfg, vocab_size, special, num_labels=0):
        labels = special.get("label_names") or [str(i) for i in range(num_labels)]
        return BertConfig(vocab_size=vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.encoder_layers,
                          num_attention_heads=cfg.encoder_attention_heads, intermediate_size=cfg.ffn_dim,
                          hidden_act=cfg.activation_function, hidden_dropout_prob=cfg.dropout,
                          attention_probs_dropout_prob=cfg.attention_dropout, classifier_dropout=cfg.dropout,
                          max_position_embeddings=cfg.max_positions, type_vocab_size=2,
                          pad_token_id=special["pad_token_id"], num_labels=len(labels),
                          id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})

    def outputs(self, out):
        return SimpleNamespace(logits=out.logits, encoder_attentions=out.attentions,
                               encoder_hidden_states=out.hidden_states, decoder_attentions=None,
                               decoder_hidden_states=None, cross_attentions=None)

    def value_projection(self, model, side):
        return _unwrap(model).bert.encoder.layer[-1].attention.self.value


class CausalLM(Family):
    """Decoder-only language models: one causal stack, read as the decoder; logits ``(B, T, V)`` where position ``t``
    predicts token ``t + 1``, so a2d's batches carry ``labels`` already shifted (``labels[t] = input_ids[t + 1]``)."""

    task, sides = "lm", ("decoder",)

    def inputs(self, batch):
        return {k: batch[k] for k in ("input_ids", "attention_mask")}

    def method_batch(self, batch):
        # the decoder side's masks of a2d.attention and a2d.methods.features: the causal mask over the real tokens
        return {"input_ids": batch["input_ids"], "decoder_input_ids": batch["input_ids"],
                "decoder_attention_mask": batch["attention_mask"], "labels": batch["labels"]}

    def outputs(self, out):
        return SimpleNamespace(logits=out.logits, decoder_attentions=out.attentions,
                               decoder_hidden_states=out.hidden_states, encoder_attentions=None,
                               encoder_hidden_states=None, cross_attentions=None)


class GPT2(CausalLM):
    name, model_class, model_types = "gpt2", GPT2LMHeadModel, ("gpt2",)

    def shape(self, config) -> Shape:
        return Shape(self.name, self.sides, self.kinds, 0, int(config.n_layer), 0, int(config.n_head),
                     int(config.n_embd), float(config.attn_pdrop or 0.0))

    def build_config(self, cfg, vocab_size, special, num_labels=0):
        return GPT2Config(vocab_size=vocab_size, n_embd=cfg.d_model, n_layer=cfg.decoder_layers,
                          n_head=cfg.decoder_attention_heads, n_inner=cfg.ffn_dim,
                          activation_function=cfg.activation_function, resid_pdrop=cfg.dropout,
                          embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout, n_positions=cfg.max_positions,
                          bos_token_id=special["bos_token_id"], eos_token_id=special["eos_token_id"],
                          pad_token_id=special["pad_token_id"], tie_word_embeddings=True)

    def value_projection(self, model, side):
        # GPT-2 computes q, k, v with one Conv1D (c_attn: d -> 3d); its value third as an nn.Linear
        attn = _unwrap(model).transformer.h[-1].attn
        return _LiveSlice(attn.c_attn, 2 * attn.embed_dim, attn.embed_dim)


class _LiveSlice:
    """The value third of GPT-2's fused ``c_attn`` (a Conv1D, weight ``(d, 3d)``) read as an ``nn.Linear``'s
    ``weight (d, d)`` and ``bias (d,)``, sliced from the live parameters at each use (gradients flow to them)."""

    def __init__(self, conv, start: int, size: int):
        self._conv, self._cols = conv, slice(start, start + size)

    @property
    def weight(self):
        return self._conv.weight[:, self._cols].t()

    @property
    def bias(self):
        return self._conv.bias[self._cols]


class Llama(CausalLM):
    name, model_class, model_types = "llama", LlamaForCausalLM, ("llama",)

    def shape(self, config) -> Shape:
        return Shape(self.name, self.sides, self.kinds, 0, int(config.num_hidden_layers), 0,
                     int(config.num_attention_heads), int(config.hidden_size),
                     float(getattr(config, "attention_dropout", 0.0) or 0.0))

    def build_config(self, cfg, vocab_size, special, num_labels=0):
        heads = cfg.decoder_attention_heads
        return LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_dim,
                           num_hidden_layers=cfg.decoder_layers, num_attention_heads=heads,
                           num_key_value_heads=heads, hidden_act=cfg.activation_function,
                           max_position_embeddings=cfg.max_positions, attention_dropout=cfg.attention_dropout,
                           bos_token_id=special["bos_token_id"], eos_token_id=special["eos_token_id"],
                           pad_token_id=special["pad_token_id"], tie_word_embeddings=True)

    def value_projection(self, model, side):
        return _unwrap(model).model.layers[-1].self_attn.v_proj


FAMILIES: dict[str, Family] = {f.name: f for f in (Marian(), Bert(), GPT2(), Llama())}
#: The family a2d builds for a task when ``family=auto``.
DEFAULT_FAMILY = {"translation": "marian", "classification": "bert", "lm": "gpt2"}


def family_of(config) -> Family:
    """The family of a Hugging Face config (its ``model_type``); a :class:`UserError` for one a2d does not read."""
    model_type = getattr(config, "model_type", None)
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    known = ", ".join(t for f in FAMILIES.values() for t in f.model_types)
    raise UserError(f"model_type {model_type!r}: a2d distils {known} models")


def shape_of(config) -> Shape:
    """:class:`Shape` of a Hugging Face config (or the shape itself)."""
    return config if isinstance(config, Shape) else family_of(config).shape(config)


def family_for(task: str, name: str = "auto") -> Family:
    """The family ``name`` (``auto``: the task's default), checked to serve ``task``."""
    if task not in TASKS:
        raise UserError(f"task {task!r}: must be one of {', '.join(TASKS)}")
    family = FAMILIES[DEFAULT_FAMILY[task] if name == "auto" else name]
    if family.task != task:
        serving = [f.name for f in FAMILIES.values() if f.task == task]
        raise UserError(f"family={name}: a {family.task} model family, the data is for {task} "
                        f"(use {' or '.join(serving)})")
    return family


def check_kinds(method: str, wanted, shape: Shape) -> None:
    """Refuse a method that needs attention kinds the model family lacks, in one line."""
    missing = [k for k in wanted if k not in shape.kinds]
    if missing:
        raise UserError(f"method {method} needs {', '.join(missing)} attention, which a {shape.family} model lacks "
                        f"(it has {', '.join(shape.kinds)})")


def check_sides(method: str, wanted, shape: Shape) -> None:
    """Refuse a method that needs a stack (encoder, decoder) the model family lacks, in one line."""
    missing = [s for s in wanted if s not in shape.sides]
    if missing:
        raise UserError(f"method {method} needs the {' and '.join(missing)} stack, which a {shape.family} model "
                        f"lacks (it has {', '.join(shape.sides)})")


__all__ = ["Family", "Shape", "FAMILIES", "DEFAULT_FAMILY", "SIDES", "SELF_KIND", "TASKS", "family_of", "shape_of",
           "family_for", "check_kinds", "check_sides"]

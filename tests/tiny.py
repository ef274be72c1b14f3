"""Small shared builders of the tests: a few hundred Multi30k pairs, an untrained teacher saved as a run folder."""
from __future__ import annotations

from pathlib import Path

import torch

from a2d.data.corpus import locate_corpus
from a2d.data.prepare import prepare
from a2d.data.vocab import Vocabulary
from a2d.models import build_model
from a2d.settings import load_config


def quiet(*args):
    pass


def tiny_corpus(out: Path, max_train: int) -> Path:
    """The first ``max_train`` Multi30k De->En pairs with a 500-piece SentencePiece model, prepared into ``out``."""
    prepare(out, locate_corpus("multi30k", "de", "en"), "de", "en", vocab_size=500, max_train=max_train, log=quiet)
    return out


def save_tiny_teacher(path: Path, data_dir: Path, overrides: list[str], seed: int = 7, bias_std: float = 0.0) -> Path:
    """An untrained ``tiny-teacher`` (with ``overrides``) and the data's vocabulary, saved as a model folder;
    ``bias_std`` > 0 draws the output bias from N(0, bias_std), which makes its distributions peaked."""
    vocab = Vocabulary.load(data_dir)
    model = build_model(load_config("tiny-teacher", overrides), len(vocab), seed=seed)
    if bias_std:
        with torch.no_grad():
            model.final_logits_bias.normal_(0.0, bias_std)
    model.save_pretrained(path)
    vocab.save(path)
    return path

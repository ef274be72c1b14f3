"""Tiny random Marian models and tiny SentencePiece models saved in the Hugging Face hub layout (as OPUS-MT's
``save_pretrained`` folders are): ``config.json``, ``generation_config.json``, ``model.safetensors``,
``source.spm``, ``target.spm``, ``vocab.json`` (``</s>`` 0, ``<unk>`` 1, ..., ``<pad>`` last),
``tokenizer_config.json``. Nothing is downloaded.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import sentencepiece as spm
import torch
from transformers import MarianConfig, MarianMTModel

from a2d.data.corpus import locate_corpus, read_parallel

EOS_BIAS = 0.0  # on </s>'s logit (random tiny models run to the length limit; CTranslate2 never returns an empty hypothesis)


def corpus_text(n: int = 2000) -> tuple[list[str], list[str]]:
    src_file, tgt_file = locate_corpus("multi30k", "de", "en")["train"]
    src, tgt = read_parallel(src_file, tgt_file)
    return src[:n], tgt[:n]


def _spm(lines: list[str], size: int) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=size,
                                   unk_id=0, bos_id=-1, eos_id=1, pad_id=-1, hard_vocab_limit=False,
                                   minloglevel=2, num_threads=1)
    return model.getvalue()


def _vocab(*models: bytes) -> dict[str, int]:
    """OPUS-MT's vocab.json over the pieces of ``models``: ``</s>`` 0, ``<unk>`` 1, the pieces, ``<pad>`` last."""
    pieces = ["</s>", "<unk>"]
    for model_bytes in models:
        sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        pieces += [sp.id_to_piece(i) for i in range(sp.get_piece_size()) if not sp.is_control(i) and not sp.is_unknown(i)]
    vocab = {}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = len(vocab)
    return vocab


def hub_folder(out: Path, shared_vocab: bool = True, tied: bool = True, separate_vocabs: bool = False, seed: int = 0,
               pieces: int = 400, vocab_size: int | None = None, **config) -> Path:
    """A random Marian model with an OPUS-MT-style tokenizer; ``shared_vocab=False`` gives separate
    source.spm and target.spm (one vocab.json over both), ``separate_vocabs=True`` separate source.spm and
    target.spm with their own vocab.json and target_vocab.json (of one size, ``<pad>`` last in both, separate
    encoder and decoder embeddings, as OPUS-MT's two-vocabulary models), ``tied=False`` untied output and
    decoder embeddings. ``pieces``: the SentencePiece size (a shared one; separate ones take 3/4 and 5/8 of it);
    ``vocab_size``: vocab.json filled up to this many entries with unused pieces before ``<pad>`` (an OPUS-MT
    size, e.g. 58,101, for the output layer's cost), with one vocab.json only."""
    out.mkdir(parents=True)
    src, tgt = corpus_text()
    if shared_vocab and not separate_vocabs:
        source = target = _spm(src + tgt, pieces)
    else:
        source, target = _spm(src, pieces * 3 // 4), _spm(tgt, pieces * 5 // 8)
    (out / "source.spm").write_bytes(source)
    (out / "target.spm").write_bytes(target)
    if separate_vocabs:
        vocab, target_vocab = _vocab(source), _vocab(target)
        while len(target_vocab) < len(vocab):  # Marian's dim-vocabs: both sides one size, <pad> one id
            target_vocab[f"<unused{len(target_vocab)}>"] = target_vocab.pop("<pad>")
            target_vocab["<pad>"] = len(target_vocab)
        if len(target_vocab) != len(vocab):
            raise ValueError(f"target vocabulary ({len(target_vocab)}) larger than the source's ({len(vocab)})")
        (out / "target_vocab.json").write_text(json.dumps(target_vocab, ensure_ascii=False), encoding="utf-8")
    else:
        vocab = _vocab(source, target)
    if vocab_size is not None:
        if separate_vocabs or vocab_size < len(vocab):
            raise ValueError(f"vocab_size={vocab_size}: one vocab.json of at least {len(vocab)} entries only")
        vocab.pop("<pad>")
        while len(vocab) < vocab_size - 1:
            vocab[f"<unused{len(vocab)}>"] = len(vocab)
        vocab["<pad>"] = len(vocab)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "MarianTokenizer", "source_lang": "de", "target_lang": "en", "unk_token": "<unk>",
        "eos_token": "</s>", "pad_token": "<pad>", "model_max_length": 512, "separate_vocabs": separate_vocabs}))
    settings = dict(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=48, activation_function="swish",
                    max_position_embeddings=128, scale_embedding=True, dropout=0.0)
    settings.update(config)
    n = len(vocab)
    cfg = MarianConfig(vocab_size=n, decoder_vocab_size=n, pad_token_id=n - 1, eos_token_id=0,
                       decoder_start_token_id=n - 1, forced_eos_token_id=0,
                       share_encoder_decoder_embeddings=tied and not separate_vocabs,
                       tie_word_embeddings=tied, **settings)
    torch.manual_seed(seed)
    model = MarianMTModel(cfg)
    with torch.no_grad():  # a random model that stops: make </s> likelier as the output goes on
        model.final_logits_bias[0, 0] = EOS_BIAS
    model.generation_config.bad_words_ids = [[n - 1]]
    model.generation_config.max_length = 128
    model.generation_config.num_beams = 4
    model.save_pretrained(out, safe_serialization=True)
    return out

"""a2d.evaluate: sacreBLEU scoring and CIs, paired bootstrap, batched decoding order, evaluate_model."""
from __future__ import annotations

import gzip
import itertools
import json

import pytest
import torch

from a2d.data.vocab import Vocabulary, train_sentencepiece
from a2d.evaluate import evaluate_model, paired_bootstrap, score, translate
from a2d.models import build_model
from a2d.settings import load_config
from a2d.utils import UserError

TINY = ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1"]

REFS = ["the cat sat on the mat .", "a dog runs in the park .", "two men are playing football on a field .",
        "a woman is cooking dinner in the kitchen .", "the children play in the snow ."] * 8
# a crude system: some words right, order and length off
WEAK = ["cat the mat on", "a dog in park running", "two men play soccer .", "woman cooking kitchen .",
        "children snow playing"] * 8


def _lines(path, n):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in itertools.islice(f, n)]


def _tiny_model(vocab_size: int, seed: int):
    model = build_model(load_config("tiny-student", TINY), vocab_size, seed=seed)
    with torch.no_grad():  # sharper random weights, so that different sources give different outputs
        for p in model.parameters():
            p.mul_(3.0)
    return model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_root):
    """A fake prepared data dir (spm, meta.json, valid.de/en) and a model folder with the same vocabulary."""
    root = tmp_path_factory.mktemp("eval")
    de = _lines(data_root / "multi30k" / "train.de.gz", 300)
    en = _lines(data_root / "multi30k" / "train.en.gz", 300)
    data = root / "data"
    data.mkdir()
    text = root / "spm.txt"
    text.write_text("\n".join(de + en) + "\n", encoding="utf-8")
    train_sentencepiece([text], data, vocab_size=200)
    (data / "meta.json").write_text(json.dumps({"src": "de", "tgt": "en", "splits": {"valid": {"lines": 12}}}),
                                    encoding="utf-8")
    (data / "valid.de").write_text("\n".join(de[:12]) + "\n", encoding="utf-8")
    (data / "valid.en").write_text("\n".join(en[:12]) + "\n", encoding="utf-8")
    vocab = Vocabulary.load(data)
    model = _tiny_model(len(vocab), seed=0)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    vocab.save(model_dir)
    return {"root": root, "data": data, "model_dir": model_dir, "model": model, "vocab": vocab, "de": de, "en": en}


# --------------------------------------------------------------------------------------------- score
def test_score_identical_is_100_with_degenerate_ci():
    result = score(REFS, REFS)
    assert result["bleu"] == pytest.approx(100.0)
    low, high = result["bleu_ci"]
    assert low == pytest.approx(100.0) and high == pytest.approx(100.0)
    assert result["chrf"] == pytest.approx(100.0)
    assert result["chrf_ci"] == [pytest.approx(100.0)] * 2
    assert result["sentences"] == len(REFS)


def test_score_ci_contains_point_estimate_and_signature():
    result = score(WEAK, REFS)
    assert set(result) >= {"bleu", "bleu_ci", "chrf", "signature", "chrf_signature", "sentences"}
    low, high = result["bleu_ci"]
    assert 0.0 < result["bleu"] < 100.0
    assert low <= result["bleu"] <= high and low < high
    assert 0.0 < result["chrf"] < 100.0
    low, high = result["chrf_ci"]  # chrF's interval: the same resamples of the sentences
    assert low <= result["chrf"] <= high and low < high
    assert score(WEAK, REFS, n_bootstrap=1)["chrf_ci"] == [result["chrf"]] * 2
    sig = result["signature"]
    assert "nrefs:1" in sig and "bs:1000" in sig and "seed:12345" in sig and "tok:13a" in sig and "version:" in sig
    assert result["chrf_signature"].startswith("nrefs:1|") and "nc:6" in result["chrf_signature"]
    assert score(WEAK, REFS) == result  # the bootstrap is seeded: same input, same interval
    json.dumps(result)  # plain Python types only


def test_score_rejects_unequal_lengths():
    with pytest.raises(ValueError):
        score(WEAK[:-1], REFS)


# --------------------------------------------------------------------------------------------- paired
def test_paired_bootstrap_p_values():
    better = list(REFS)
    better[0] = "the cat sat on a mat ."
    slightly = list(WEAK)
    slightly[1] = "a dog runs in park"
    results = paired_bootstrap(WEAK, {"better": better, "slightly": slightly, "same": list(WEAK)}, REFS,
                               n_samples=300)
    assert set(results) == {"better", "slightly", "same"}
    for r in results.values():
        assert 0.0 <= r["p_value"] <= 1.0 and 0.0 <= r["chrf_p_value"] <= 1.0
        assert r["baseline_bleu"] == pytest.approx(score(WEAK, REFS, n_bootstrap=1)["bleu"])
    assert results["better"]["p_value"] < 0.01
    assert results["better"]["delta"] > 50
    assert results["same"]["p_value"] == 1.0 and results["same"]["delta"] == 0.0
    assert "bs:300" in results["better"]["signature"]
    with pytest.raises(ValueError):
        paired_bootstrap(WEAK, {"short": WEAK[:-1]}, REFS)


# --------------------------------------------------------------------------------------------- translate
@pytest.mark.parametrize("beam", [1, 3])
def test_translate_keeps_input_order(tiny, beam):
    model, vocab = tiny["model"], tiny["vocab"]
    sources = tiny["de"][:16] + [""]
    # max_len_a=0: every batch gets the same length budget, so batching cannot change the output
    kw = {"beam": beam, "max_len_a": 0.0, "max_len_b": 8}
    forward = translate(model, vocab, sources, **kw)
    assert len(forward) == len(sources) and all(isinstance(h, str) for h in forward)
    assert forward[-1] == ""
    assert len(set(forward[:-1])) >= 4, "the test model should give varied outputs"
    backward = translate(model, vocab, sources[::-1], max_tokens=60, **kw)  # several batches
    assert backward[::-1] == forward
    assert translate(model, vocab, [], **kw) == []


def test_translate_restores_training_mode_and_truncates(tiny):
    model, vocab = tiny["model"], tiny["vocab"]
    model.train()
    long_source = " ".join(tiny["de"][:60])  # far more subwords than max_positions
    out = translate(model, vocab, [long_source, "ein Hund"], beam=2, max_len_a=0.0, max_len_b=5)
    assert len(out) == 2
    assert model.training
    model.eval()


# --------------------------------------------------------------------------------------------- evaluate_model
def test_evaluate_model_writes_json_and_hypotheses(tiny):
    out = tiny["root"] / "results" / "valid.json"
    result = evaluate_model(tiny["model_dir"], tiny["data"], split="valid", beam=2, out=out,
                            max_len_a=0.5, max_len_b=5, progress=False)
    saved = json.loads(out.read_text(encoding="utf-8"))
    for key in ("bleu", "bleu_ci", "chrf", "signature", "chrf_signature", "sentences", "model", "data",
                "split", "beam", "decode_seconds", "sentences_per_second", "device"):
        assert key in saved, key
    assert saved == result
    assert saved["sentences"] == 12 and saved["split"] == "valid" and saved["beam"] == 2
    assert len(saved["bleu_ci"]) == 2
    hyp = out.with_suffix(".hyp")
    assert hyp.name == "valid.hyp"
    assert len(hyp.read_text(encoding="utf-8").splitlines()) == 12


def test_evaluate_model_vocabulary_mismatch(tiny, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    text = tmp_path / "t.txt"
    text.write_text("\n".join(tiny["en"]) + "\n", encoding="utf-8")
    train_sentencepiece([text], other, vocab_size=150)
    vocab = Vocabulary.load(other)
    model_dir = tmp_path / "model"
    build_model(load_config("tiny-student", TINY), len(vocab)).save_pretrained(model_dir)
    vocab.save(model_dir)
    with pytest.raises(UserError, match="trained with another vocabulary than"):
        evaluate_model(model_dir, tiny["data"], split="valid", progress=False)


def test_evaluate_model_missing_split_and_meta(tiny, tmp_path):
    with pytest.raises(UserError, match=r"test\.de"):
        evaluate_model(tiny["model_dir"], tiny["data"], split="test", progress=False)
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(UserError, match="meta.json"):
        evaluate_model(tiny["model_dir"], bare, split="valid", progress=False)


def test_bleu_tokenizer_follows_the_target_language():
    from a2d.evaluate import score
    from a2d.utils import UserError

    hyps, refs = ["我喜欢这只小狗。"], ["我很喜欢这只小狗。"]
    latin, chinese = score(hyps, refs, n_bootstrap=1), score(hyps, refs, n_bootstrap=1, tgt_lang="zh-Hans")
    assert "tok:13a" in latin["signature"] and "tok:zh" in chinese["signature"]
    assert latin["bleu"] == 0.0 < chinese["bleu"]  # 13a sees one word per sentence; zh splits the characters
    assert "tok:13a" in score(["a dog"], ["a dog"], n_bootstrap=1, tgt_lang="en")["signature"]
    try:
        japanese = score(["犬です"], ["犬です"], n_bootstrap=1, tgt_lang="ja")
    except UserError as e:  # its MeCab tokenizer is an extra
        assert "sacrebleu[ja]" in str(e) and "\n" not in str(e)
    else:
        assert "tok:ja-mecab" in japanese["signature"]

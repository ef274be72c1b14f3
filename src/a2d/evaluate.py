"""Evaluation: decode with beam search, score with sacreBLEU, confidence intervals and significance.

* :func:`translate` decodes sources with a Hugging Face model in memory (the engines and how they decode:
  :mod:`a2d.translator`).
* :func:`score` gives corpus BLEU with its 95% bootstrap confidence interval (sacreBLEU's own
  resampling, 1000 resamples, fixed seed) and chrF, with both sacreBLEU signatures.
* :func:`paired_bootstrap` compares systems to a baseline with sacreBLEU's paired bootstrap test.
* :func:`evaluate_model` ties these together for ``a2d evaluate``: a translator (or a model folder), a
  prepared data directory and a split in; a JSON report (and the hypotheses, one per line) out.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from a2d.config import DEFAULT_BEAM
from a2d.data.corpus import read_lines
from a2d.data.prepare import load_meta
from a2d.data.vocab import Vocabulary, check_same_vocabulary
from a2d.errors import BadValue
from a2d.translator import HFTranslator, Translator, load_translator
from a2d.utils import UserError, atomic_write_text, check_output_file

#: sacreBLEU's default seed for its bootstrap resampling (``SACREBLEU_SEED``); we pin it explicitly.
BOOTSTRAP_SEED = 12345


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------
def translate(model, vocab, sources: list[str], beam: int = 5, max_len_a: float = 1.2, max_len_b: int = 10,
              max_tokens: int = 6000, progress: bool = False) -> list[str]:
    """Translate ``sources`` with a Hugging Face model in memory and its tokenizer: what
    :class:`a2d.translator.HFTranslator` does (decoding is described in :mod:`a2d.translator`)."""
    return HFTranslator(model, vocab).translate(sources, beam=beam, max_len_a=max_len_a, max_len_b=max_len_b,
                                                max_tokens=max_tokens, progress=progress)


# ---------------------------------------------------------------------------------------------
# scoring
# ---------------------------------------------------------------------------------------------
@contextmanager
def _sacrebleu_seed(seed: int):
    """sacreBLEU reads its resampling seed from ``SACREBLEU_SEED`` (default 12345); pin it for the call."""
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(int(seed))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def bleu_metric_for(tgt_lang: str | None = None, **kwargs):
    """sacreBLEU's BLEU with the tokenizer its defaults pick for the target language.

    13a for most languages; ``zh`` for Chinese, ``ja-mecab`` for Japanese and ``ko-mecab`` for Korean
    (the signature records which). ``tgt_lang`` may carry a region or script (``zh-Hans``, ``ja_JP``).
    """
    from sacrebleu.metrics import BLEU

    lang = (tgt_lang or "").replace("_", "-").split("-")[0].lower() or None
    try:
        return BLEU(trg_lang=lang or "", **kwargs)
    except RuntimeError as e:  # the Japanese and Korean tokenizers need extra packages
        hint = next((line.strip() for line in str(e).splitlines() if "pip install" in line), "")
        raise UserError(f"BLEU for target language {tgt_lang!r} needs its tokenizer's packages"
                        + (f" ({hint})" if hint else "")) from None


def _check_lengths(hypotheses, references, what: str = "hypotheses") -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} {what} but {len(references)} references")


def _percentile_ci(metric, hypotheses: list[str], references: list[str], n_bootstrap: int) -> tuple[float, float]:
    """The 2.5% / 97.5% bounds of sacreBLEU's bootstrap scores (the same resamples as its ``μ ± ci``)."""
    from sacrebleu.significance import _bootstrap_resample

    stats = metric._extract_corpus_statistics(hypotheses, [references])
    _, scores = _bootstrap_resample(stats, metric, n_bootstrap)
    values = sorted(s.score for s in scores)
    lower_idx = len(values) // 40  # sacreBLEU's own convention (Score.estimate_ci)
    return float(values[lower_idx]), float(values[len(values) - lower_idx - 1])


def score(hypotheses: list[str], references: list[str], n_bootstrap: int = 1000,
          seed: int = BOOTSTRAP_SEED, tgt_lang: str | None = None) -> dict:
    """Corpus BLEU and chrF, each with a 95% bootstrap confidence interval, computed by sacreBLEU.

    Returns ``{"bleu", "bleu_ci": [low, high], "bleu_mean", "chrf", "chrf_ci": [low, high], "signature",
    "chrf_signature", "sentences"}``. ``bleu_ci`` holds the 2.5th and 97.5th percentiles of ``n_bootstrap``
    resampled corpus BLEU scores (sacreBLEU's resampling with a fixed seed, so the result is deterministic);
    sacreBLEU itself prints these as ``μ = bleu_mean ± (high - low) / 2``; ``chrf_ci`` the same of chrF, over the
    same resamples of the sentences. With ``n_bootstrap <= 1`` no resampling is done and each interval is the
    score itself. ``tgt_lang`` picks BLEU's tokenizer (:func:`bleu_metric_for`).
    """
    from sacrebleu.metrics import CHRF

    hypotheses, references = list(hypotheses), list(references)
    _check_lengths(hypotheses, references)
    if not hypotheses:
        raise ValueError("no sentences to score")
    n_bootstrap = int(n_bootstrap)
    bleu_metric, chrf_metric = bleu_metric_for(tgt_lang), CHRF()
    with _sacrebleu_seed(seed):
        bleu = bleu_metric.corpus_score(hypotheses, [references], n_bootstrap=max(1, n_bootstrap))
        if n_bootstrap > 1 and hypotheses:
            low, high = _percentile_ci(bleu_metric, hypotheses, references, n_bootstrap)
            mean = float(bleu._mean)
        else:
            low = high = mean = float(bleu.score)
    chrf, chrf_ci = chrf_with_ci(hypotheses, references, n_bootstrap, seed, chrf_metric)
    return {
        "bleu": float(bleu.score),
        "bleu_ci": [low, high],
        "bleu_mean": mean,
        "chrf": chrf,
        "chrf_ci": chrf_ci,
        "signature": bleu_metric.get_signature().format(),
        "chrf_signature": chrf_metric.get_signature().format(),
        "sentences": len(hypotheses),
    }


def chrf_with_ci(hypotheses: list[str], references: list[str], n_bootstrap: int = 1000,
                 seed: int = BOOTSTRAP_SEED, metric=None) -> tuple[float, list[float]]:
    """Corpus chrF and its 95% bootstrap interval ``[low, high]`` (as :func:`score` gives them; ``[chrf, chrf]``
    with ``n_bootstrap <= 1``). ``metric``: a sacreBLEU ``CHRF`` to use (default a new one)."""
    from sacrebleu.metrics import CHRF

    metric = metric or CHRF()
    hypotheses, references = list(hypotheses), list(references)
    with _sacrebleu_seed(seed):
        chrf = float(metric.corpus_score(hypotheses, [references]).score)
        ci = list(_percentile_ci(metric, hypotheses, references, n_bootstrap)) if n_bootstrap > 1 else [chrf] * 2
    return chrf, ci


def paired_bootstrap(baseline_hyps: list[str], system_hyps: dict[str, list[str]], references: list[str],
                     n_samples: int = 1000, seed: int = BOOTSTRAP_SEED, tgt_lang: str | None = None) -> dict[str, dict]:
    """Paired bootstrap resampling (sacreBLEU's ``--paired-bs``) of each system against the baseline.

    Returns, per system name, ``{"bleu", "p_value", "bleu_mean", "bleu_ci_halfwidth" (of the 95%
    interval: sacreBLEU's ``μ ± ci``), "baseline_bleu", "delta", "chrf", "chrf_p_value",
    "signature"}``. ``p_value`` is for the BLEU difference; small means the difference is unlikely
    under resampling. A system whose output equals the baseline's gets ``p_value`` 1.0 (sacreBLEU
    itself would report ``1 / (n_samples + 1)`` there, as no resample difference exceeds 0).
    """
    from sacrebleu.metrics import CHRF
    from sacrebleu.significance import PairedTest

    references = list(references)
    _check_lengths(baseline_hyps, references, "baseline hypotheses")
    for name, hyps in system_hyps.items():
        _check_lengths(hyps, references, f"hypotheses of {name!r}")
    if not references:
        raise ValueError("no sentences to compare")
    if not system_hyps:
        return {}
    named = [("__baseline__", list(baseline_hyps))] + [(name, list(h)) for name, h in system_hyps.items()]
    metrics = {"BLEU": bleu_metric_for(tgt_lang, references=[references]), "chrF": CHRF(references=[references])}
    with _sacrebleu_seed(seed):
        test = PairedTest(named, metrics, references=None, test_type="bs", n_samples=int(n_samples))
        signatures, results = test()
    bleu_key = next(k for k in results if k.startswith("BLEU"))
    chrf_key = next(k for k in results if k.startswith("chrF"))
    baseline = results[bleu_key][0]
    out = {}
    for row, name in enumerate(results["System"]):
        if row == 0:
            continue
        b, c = results[bleu_key][row], results[chrf_key][row]
        # sacreBLEU gives p = 1/(n+1) when every resample difference is 0; identical output is p = 1.
        same = list(system_hyps[name]) == list(baseline_hyps)
        out[name] = {
            "bleu": float(b.score), "p_value": 1.0 if same else float(b.p_value),
            "bleu_mean": float(b.mean), "bleu_ci_halfwidth": float(b.ci),
            "baseline_bleu": float(baseline.score), "delta": float(b.score - baseline.score),
            "chrf": float(c.score), "chrf_p_value": 1.0 if same else float(c.p_value),
            "signature": signatures[bleu_key].format(),
        }
    return out


# ---------------------------------------------------------------------------------------------
# a2d evaluate
# ---------------------------------------------------------------------------------------------
def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(f"{path}: no such file (is the split name right?)")
    return read_lines(path)


def evaluate_model(model: Translator | Path | str, data_dir: Path | str, split: str = "test",
                   beam: int | None = None, out: Path | str | None = None, max_len_a: float = 1.2, max_len_b: int = 10,
                   progress: bool = True, max_tokens: int = 6000, threads: int = 1, shortlist: bool = False,
                   translators: int = 1) -> dict:
    """Translate ``DATA_DIR/{split}.{src}`` with ``model`` and score it against ``{split}.{tgt}``.

    ``model`` is a :class:`~a2d.translator.Translator`, or a folder, opened with
    :func:`~a2d.translator.load_translator` (``threads`` and ``translators``: CTranslate2's; ``shortlist``: with the
    export's vocabulary map) once the data is found. With ``out`` the result is written there as JSON and the
    hypotheses, one per line, to ``out.with_suffix(".hyp")``. Returns the result dict (the :func:`score` keys plus
    model, data, split, beam, decode_seconds, sentences_per_second, device, shortlist: the map's description, None
    without one; truncated: the sources cut to the model's positions). ``beam=None``: the translator's
    ``default_beam`` (the one its folder records).
    """
    if beam is not None and beam < 1:
        raise BadValue("beam", beam, "must be at least 1")
    if out is not None:
        check_output_file(out)
        check_output_file(Path(out).with_suffix(".hyp"))
    data_dir = Path(data_dir)
    meta = load_meta(data_dir)
    src, tgt = meta["src"], meta["tgt"]
    data_vocab = Vocabulary.load(data_dir)
    src_path, ref_path = data_dir / f"{split}.{src}", data_dir / f"{split}.{tgt}"
    sources, references = _read_lines(src_path), _read_lines(ref_path)
    if len(sources) != len(references):
        raise UserError(f"{src_path} has {len(sources)} lines but {ref_path} has {len(references)}")

    folder = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if folder is not None:
        translator = load_translator(folder, threads=threads, shortlist=shortlist, translators=translators)
    elif shortlist:
        raise ValueError("shortlist=True is for a folder; give a translator made with its shortlist instead")
    elif translators != 1:
        raise ValueError(f"translators={translators} is for a folder; give a translator made with them instead")
    else:
        translator = model
    check_same_vocabulary(translator.vocab, data_vocab, "model", folder, data_dir)
    if beam is None:
        beam = getattr(translator, "default_beam", DEFAULT_BEAM)
    start = time.perf_counter()
    hypotheses = translator.translate(sources, beam=beam, max_len_a=max_len_a, max_len_b=max_len_b,
                                      max_tokens=max_tokens, progress=progress)
    seconds = time.perf_counter() - start
    result = score(hypotheses, references, tgt_lang=tgt)
    result.update({
        "model": translator.name, "data": str(data_dir), "split": split, "src": src, "tgt": tgt, "beam": beam,
        "max_len_a": max_len_a, "max_len_b": max_len_b, "decode_seconds": round(seconds, 3),
        "sentences_per_second": round(len(sources) / seconds, 2) if seconds > 0 else None,
        "device": translator.device, "shortlist": getattr(translator, "shortlist", None),
        "truncated": getattr(translator, "truncated", 0),
    })
    if out is not None:
        out = Path(out)
        atomic_write_text(out, json.dumps(result, indent=2) + "\n")
        atomic_write_text(out.with_suffix(".hyp"), "".join(h + "\n" for h in hypotheses))
    return result


__all__ = ["translate", "score", "chrf_with_ci", "bleu_metric_for", "paired_bootstrap", "evaluate_model", "BOOTSTRAP_SEED"]

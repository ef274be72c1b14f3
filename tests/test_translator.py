"""a2d.translator: one Translator interface, a Hugging Face and a CTranslate2 engine sharing one decoding loop,
load_translator choosing by the folder, and evaluation taking a translator. Tiny random models; nothing is
downloaded."""
from __future__ import annotations

import pytest

from a2d.data.prepare import prepare
from a2d.data.vocab import Vocabulary
from a2d.evaluate import evaluate_model
from a2d.export import export
from a2d.translator import BatchTranslator, CT2Translator, HFTranslator, load_translator
from a2d.utils import UserError
from tests.hub_models import corpus_text, hub_folder

pytestmark = pytest.mark.usefixtures("one_thread")


def quiet(*args):
    pass


@pytest.fixture(scope="module")
def folders(tmp_path_factory, data_root):
    """A random Marian folder (weights large enough that the output depends on the source), its float32 export,
    and a data directory prepared with its tokenizer."""
    root = tmp_path_factory.mktemp("translator")
    model = hub_folder(root / "hf", init_std=0.5)
    export(model, root / "ct2", quantization="float32", log=quiet)
    src, tgt = corpus_text(60)
    text = root / "text"
    text.mkdir()
    for split, rows in (("train", slice(0, 40)), ("valid", slice(40, None))):
        for lang, lines in (("de", src[rows]), ("en", tgt[rows])):
            (text / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    splits = {s: (text / f"{s}.de", text / f"{s}.en") for s in ("train", "valid")}
    prepare(root / "data", splits, "de", "en", tokenizer=model, log=quiet)
    return model, root / "ct2", root / "data"


class Echo(BatchTranslator):
    """An engine that returns its sources' ids: what the shared loop hands an engine, recorded."""

    def __init__(self, vocab, limit: int):
        self.vocab, self.name, self.device, self.limit = vocab, "echo", "cpu", limit
        self.calls = []

    def generate(self, batch, beam, max_new):
        self.calls.append((batch, beam, max_new))
        return batch


def test_the_shared_loop_cuts_batches_and_restores_the_order(folders):
    vocab = Vocabulary.load(folders[0])
    sources = ["Ein Hund.", "", "Zwei Männer spielen Fußball auf einem Feld.", "   ", "Eine Frau kocht."]
    echo = Echo(vocab, limit=6)
    out = echo.translate(sources, beam=3, max_len_a=0.5, max_len_b=2, max_tokens=7)
    assert out[1] == out[3] == "" and out[0] == "Ein Hund."
    assert out[4] == vocab.decode(vocab.encode(sources[4])[:6]) != sources[4]  # cut to the model's positions
    cut = vocab.encode(sources[2])[:6] + [vocab.eos_id]  # the model's positions less one, then </s>
    assert echo.calls[0][0] == [cut] and len(cut) == 7  # longest first; 7 tokens fill a batch of max_tokens=7
    for batch, beam, max_new in echo.calls:
        longest = max(map(len, batch))
        assert beam == 3 and len(batch) * longest <= 7 and max_new == max(1, min(int(0.5 * longest + 2), 6))
    assert all(ids[-1] == vocab.eos_id for batch, _, _ in echo.calls for ids in batch)
    assert Echo(vocab, 6).translate(["", None]) == ["", ""]
    with pytest.raises(ValueError, match="beam=0"):
        echo.translate(sources, beam=0)


def test_load_translator_chooses_the_engine_and_both_decode_alike(folders):
    model, ct2_folder, _ = folders
    hf, ct2 = load_translator(model), load_translator(ct2_folder, threads=1)
    assert isinstance(hf, HFTranslator) and isinstance(ct2, CT2Translator)
    assert (hf.name, ct2.name, ct2.device) == (str(model), str(ct2_folder), "cpu")
    assert "translate" not in vars(HFTranslator) and "translate" not in vars(CT2Translator)  # one loop for both
    sources = corpus_text(20)[0] + ["", "Ein Hund läuft über die Wiese."]
    for kw in ({"beam": 1}, {"beam": 3, "max_tokens": 60}, {"beam": 2, "max_len_a": 0.0, "max_len_b": 3}):
        hyps = hf.translate(sources, **kw)
        assert ct2.translate(sources, **kw) == hyps and hyps[-2] == ""
    assert len(set(hf.translate(sources, beam=1))) > 10


def test_evaluate_takes_a_translator(folders):
    model, ct2_folder, data = folders
    by_path = evaluate_model(ct2_folder, data, split="valid", beam=2, progress=False)
    translator = load_translator(ct2_folder)
    given = evaluate_model(translator, data, split="valid", beam=2, progress=False)
    timing = ("decode_seconds", "sentences_per_second")
    assert {k: v for k, v in given.items() if k not in timing} == {k: v for k, v in by_path.items() if k not in timing}
    assert given["model"] == str(ct2_folder) and given["device"] == "cpu" and given["sentences"] == 20
    assert evaluate_model(model, data, split="valid", beam=2, progress=False)["bleu"] == given["bleu"]


def test_a_folder_that_is_not_an_export(folders, tmp_path):
    with pytest.raises(UserError, match="not an a2d export"):
        CT2Translator(folders[0])
    with pytest.raises(UserError, match="--threads 0"):
        CT2Translator(folders[1], threads=0)

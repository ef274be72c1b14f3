"""a2d.translator: one Translator interface, a Hugging Face and a CTranslate2 engine sharing one decoding loop,
load_translator choosing by the folder, and evaluation taking a translator. Tiny random models; nothing is
downloaded."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import MarianMTModel

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

    def generate(self, batch, beam, max_new, force=False):
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


class SlowEcho(Echo):
    """An Echo whose batches take a while, recording how many it decodes at once."""

    def __init__(self, vocab, limit: int, workers: int):
        super().__init__(vocab, limit)
        self.workers, self.now, self.most, self.lock = workers, 0, 0, threading.Lock()

    def generate(self, batch, beam, max_new, force=False):
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.05)
        with self.lock:
            self.now -= 1
        return super().generate(batch, beam, max_new, force)


def test_workers_decode_batches_at_once_in_the_input_order(folders):
    """An engine with two workers decodes two batches at a time, from the same batches, and gives each source its
    own output; one worker decodes one batch at a time."""
    vocab = Vocabulary.load(folders[0])
    sources = corpus_text(12)[0]
    one, two = SlowEcho(vocab, 40, workers=1), SlowEcho(vocab, 40, workers=2)
    assert one.translate(sources, max_tokens=30) == two.translate(sources, max_tokens=30)
    assert len(one.calls) > 3 and sorted(one.calls) == sorted(two.calls)
    assert (one.most, two.most) == (1, 2)


def test_loading_ctranslate2_leaves_torch_its_threads(folders):
    """CTranslate2 sets OpenMP's thread count (torch's too) to its intra_threads when it loads a model; the translator
    gives torch back its own, so that what runs after it (a seq-KD cell's training) keeps its threads."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        translator = CT2Translator(folders[1], threads=1, translators=2)
        assert torch.get_num_threads() == 2
        translator.translate(corpus_text(4)[0], beam=2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_ct2_translators_give_the_same_translations(folders):
    """Two CTranslate2 translators of one thread decode different batches at once and give one translator's
    outputs; Hugging Face has no translators, and none is a wrong count."""
    model, ct2_folder, data = folders
    sources = corpus_text(20)[0] + ["", "Ein Hund läuft über die Wiese."]
    one, two = load_translator(ct2_folder), load_translator(ct2_folder, translators=2)
    assert (one.translator.num_translators, two.translator.num_translators, two.workers) == (1, 2, 2)
    for beam in (1, 3):
        assert two.translate_ids(sources, beam=beam, max_tokens=40) == one.translate_ids(sources, beam=beam,
                                                                                         max_tokens=40)
    with pytest.raises(UserError, match="^translators=2: .* is not a CTranslate2 export"):
        load_translator(model, translators=2)
    with pytest.raises(UserError, match="^translators=0: must be at least 1$"):
        CT2Translator(ct2_folder, translators=0)
    with pytest.raises(ValueError, match="translators=2 is for a folder"):
        evaluate_model(one, data, split="valid", translators=2, progress=False)
    by_two = evaluate_model(ct2_folder, data, split="valid", beam=2, translators=2, progress=False)
    assert by_two["bleu"] == evaluate_model(ct2_folder, data, split="valid", beam=2, progress=False)["bleu"]


def test_cutting_a_source_is_said_in_one_line(folders, capsys):
    """A source longer than the model's positions is cut (to the positions less one, then </s>), and the call says
    so on standard error in one line: how many lines, to how many pieces; a call that cuts nothing says nothing."""
    vocab = Vocabulary.load(folders[0])
    echo = Echo(vocab, limit=6)
    sources = ["Ein Hund.", "Zwei Männer spielen Fußball auf einem Feld.", "", "Eine Frau kocht heute Abend Suppe."]
    echo.translate(sources)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and echo.truncated == 2
    assert err.startswith("a2d: 2 of 3 input lines have more pieces than echo takes; cut to their first 6 ")
    echo.translate(sources[:1])
    assert capsys.readouterr().err == "" and echo.truncated == 0


def test_the_default_beam_is_the_folders(folders, tmp_path, capsys, monkeypatch):
    """A folder that records num_beams (the hub model: 4) is decoded with it when no --beam is given, by either
    engine and by a2d translate and evaluate; an old folder that records none gets 5."""
    import io
    import json

    from a2d.cli import main

    model, ct2_folder, data = folders
    assert load_translator(model).default_beam == load_translator(ct2_folder).default_beam == 4
    assert evaluate_model(ct2_folder, data, split="valid", progress=False)["beam"] == 4
    sources = corpus_text(6)[0]
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("\n".join(sources).encode() + b"\n")))
    assert main(["translate", "--model", str(ct2_folder)]) == 0
    assert capsys.readouterr().out.splitlines() == load_translator(ct2_folder).translate(sources, beam=4)
    settings = json.loads((ct2_folder / "a2d_export.json").read_text())
    old = tmp_path / "old-ct2"
    old.mkdir()
    for path in ct2_folder.iterdir():
        (old / path.name).write_bytes(path.read_bytes())
    del settings["beam"]
    (old / "a2d_export.json").write_text(json.dumps(settings))
    assert load_translator(old).default_beam == 5


def test_an_export_of_the_first_format_still_decodes_alike(folders, tmp_path):
    """An export from before add_source_eos (a2d closes each source with </s> itself) gives the same output."""
    import json

    _, ct2_folder, _ = folders
    old = tmp_path / "old"
    old.mkdir()
    for path in ct2_folder.iterdir():
        (old / path.name).write_bytes(path.read_bytes())
    config = json.loads((old / "config.json").read_text())
    config["add_source_eos"] = False
    (old / "config.json").write_text(json.dumps(config))
    sources = corpus_text(12)[0]
    first, second = CT2Translator(old), CT2Translator(ct2_folder)
    assert (first.adds_eos, second.adds_eos) == (False, True)
    for beam in (1, 3):
        assert first.translate(sources, beam=beam) == second.translate(sources, beam=beam)


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
    with pytest.raises(UserError, match="^threads=0: must be at least 1$"):
        CT2Translator(folders[1], threads=0)


STORED_TEACHER = Path(__file__).resolve().parents[1] / "src" / "a2d" / "assets" / "demo-teacher"  # tiny-r3 De-En


@pytest.fixture(scope="module")
def stopping(tmp_path_factory):
    """A random hub model whose </s> is so likely that it stops at once, and its float32 export."""
    root = tmp_path_factory.mktemp("stopping")
    folder = hub_folder(root / "hf", init_std=0.5)
    model = MarianMTModel.from_pretrained(folder)
    with torch.no_grad():
        model.final_logits_bias[0, model.config.eos_token_id] = 50.0
    model.save_pretrained(folder, safe_serialization=True)
    export(folder, root / "ct2", quantization="float32", log=quiet)
    return folder, root / "ct2"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The stored tiny-r3 De-En teacher (it ends its hypotheses with </s>) and its float32 export."""
    out = tmp_path_factory.mktemp("trained") / "ct2"
    export(STORED_TEACHER, out, quantization="float32", log=quiet)
    return STORED_TEACHER, out


@pytest.mark.parametrize("which", ["folders", "stopping"])
def test_force_length_gives_exactly_that_many_decoder_steps(which, request):
    """A model that never stops and one that stops at once both take exactly L steps on either engine."""
    model, ct2_folder = request.getfixturevalue(which)[:2]
    hf, ct2 = load_translator(model), load_translator(ct2_folder)
    sources = corpus_text(12)[0] + [""]
    for translator in (hf, ct2):
        free = translator.translate_ids(sources, beam=2)
        if which == "stopping":
            assert all(ids == [translator.vocab.eos_id] for ids in free[:-1])  # </s> is a decoder step
            assert translator.translate(sources) == [""] * 13  # CTranslate2 too may stop at the first step
        for beam, length in ((1, 5), (3, 9), (2, 1)):
            forced = translator.translate_ids(sources, beam=beam, force_length=length, max_tokens=80)
            assert [len(ids) for ids in forced] == [length] * 12 + [0]
            assert all(translator.vocab.eos_id not in ids[:-1] for ids in forced)


def test_force_length_is_refused_outside_the_models_positions(folders):
    hf = load_translator(folders[0])
    for bad in (0, hf.limit + 1):
        with pytest.raises(UserError, match=f"force_length={bad}: must be between 1 and {hf.limit}") as err:
            hf.translate_ids(["Ein Hund."], force_length=bad)
        assert "\n" not in str(err.value)


def test_steps_are_the_ids_the_engine_generated(trained):
    """translate_ids gives each engine's own output (HF: after the start token, through </s>; CTranslate2: its
    hypothesis with its end token), translate() is their text, and the two engines agree on a trained model."""
    model, ct2_folder = trained
    hf, ct2 = load_translator(model), load_translator(ct2_folder)
    sources = corpus_text(30)[0]
    eos = hf.vocab.eos_id
    for beam in (1, 4):
        ids_hf, ids_ct2 = hf.translate_ids(sources, beam=beam), ct2.translate_ids(sources, beam=beam)
        assert ids_hf == ids_ct2
        assert all(ids[-1] == eos and eos not in ids[:-1] for ids in ids_hf)  # every one stopped
        assert hf.translate(sources, beam=beam) == [hf.vocab.decode(ids).strip() for ids in ids_hf]
        assert ct2.translate(sources, beam=beam) == hf.translate(sources, beam=beam)
        for source, ids in list(zip(sources, ids_hf))[:5]:  # one sentence per batch: the engines' raw output
            encoded = hf.vocab.encode(source) + [eos]
            with torch.inference_mode():
                raw = hf.model.generate(input_ids=torch.tensor([encoded]), max_new_tokens=200, num_beams=beam,
                                        do_sample=False, **({"early_stopping": True} if beam > 1 else {}))
            assert raw[0, 0].item() == hf.model.config.decoder_start_token_id and raw[0, 1:].tolist() == ids
            pieces = ct2.translator.translate_batch([ct2.vocab.pieces(encoded[:-1])], beam_size=beam,  # adds </s>
                                                    return_end_token=True)[0].hypotheses[0]
            assert pieces[-1] == "</s>" and ct2.vocab.piece_ids(pieces) == ids

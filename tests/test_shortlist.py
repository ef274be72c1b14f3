"""a2d.shortlist (``a2d shortlist``): the lexical table against a brute-force count, the map's content on a hand-made
parallel corpus, the file CTranslate2 reads (it restricts the output, and a map that allows every piece changes
nothing), ``--shortlist`` in translate/evaluate/benchmarks, and the refusals. Tiny random models; nothing is timed."""
from __future__ import annotations

import io
import json
import random
from pathlib import Path

import ctranslate2
import numpy as np
import pytest

from a2d.cli import main
from a2d.data.prepare import ParallelData, prepare
from a2d.experiments import speed
from a2d import export as export_module
from a2d.export import export, read_settings
from a2d.shortlist import (INFO_FILE, VMAP_FILE, ct2_vocabularies, describe, frequent_targets, lexical_table,
                           write_shortlist)
from a2d.translator import CT2Translator, load_translator
from a2d.utils import UserError
from tests.hub_models import corpus_text, hub_folder
from tests.tiny import quiet, save_tiny_teacher

pytestmark = pytest.mark.usefixtures("one_thread")

WORDS = {"Hund": "dog", "Katze": "cat", "Haus": "house", "Baum": "tree", "rot": "red", "groß": "big",
         "klein": "small", "Mann": "man", "Frau": "woman"}
TINY = ["d_model=32", "ffn_dim=64", "encoder_layers=1", "decoder_layers=1", "encoder_attention_heads=2",
        "decoder_attention_heads=2"]


# =============================================================================================== the table
def _brute_force(src: list[list[int]], tgt: list[list[int]], top_n: int) -> dict[int, list[int]]:
    """Dice over sentence pairs, counted pair by pair in Python; ties to the smaller target id."""
    both, cs, ct = {}, {}, {}
    for s_ids, t_ids in zip(src, tgt):
        for s in set(s_ids):
            cs[s] = cs.get(s, 0) + 1
            for t in set(t_ids):
                both[s, t] = both.get((s, t), 0) + 1
        for t in set(t_ids):
            ct[t] = ct.get(t, 0) + 1
    table = {}
    for (s, t), c in both.items():
        table.setdefault(s, []).append((-2 * c / (cs[s] + ct[t]), t))
    return {s: [t for _, t in sorted(v)[:top_n]] for s, v in table.items()}


def _flat(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    return np.array([i for s in seqs for i in s], dtype=np.int32), offsets


@pytest.mark.parametrize("max_pairs", [1, 7, 50, 1 << 24])
def test_lexical_table_is_dice_whatever_the_blocks(max_pairs):
    """The vectorised, blocked count gives the brute-force Dice lists, however few pairs it counts at a time (a
    block of 1 pair cuts every source id's sentences into slices that must be merged)."""
    rng = random.Random(3)
    src = [[rng.randrange(12) for _ in range(rng.randint(1, 6))] for _ in range(40)]
    tgt = [[rng.randrange(9) for _ in range(rng.randint(1, 6))] for _ in range(40)]
    for top_n in (1, 3, 9):
        rows, targets = lexical_table(_flat(src), _flat(tgt), 12, 9, top_n, max_pairs=max_pairs)
        found = {}
        for s, t in zip(rows.tolist(), targets.tolist()):
            found.setdefault(s, []).append(t)
        assert found == _brute_force(src, tgt, top_n)
        assert list(rows) == sorted(rows)


def test_a_translation_is_first_and_frequent_pieces_are_counted():
    src = [[5, 6], [5, 7], [6, 7], [5], [7, 6]]  # 5 <-> 10, 6 <-> 11, 7 <-> 12; 13 follows 6 once
    tgt = [[10, 11], [10, 12], [11, 12, 13], [10], [12, 11]]
    rows, targets = lexical_table(_flat(src), _flat(tgt), 8, 14, top_n=1)
    assert dict(zip(rows.tolist(), targets.tolist())) == {5: 10, 6: 11, 7: 12}
    rows, targets = lexical_table(_flat(src), _flat(tgt), 8, 14, top_n=5)
    assert targets[rows == 6].tolist()[0] == 11 and 13 in targets[rows == 6] and 13 not in targets[rows == 5]
    tokens = np.array([3, 3, 3, 1, 1, 2], dtype=np.int32)
    assert frequent_targets(tokens, 5, 2).tolist() == [3, 1]
    assert frequent_targets(tokens, 5, 5).tolist() == [3, 1, 2, 0, 4]  # every piece, unseen ones by id


# =============================================================================================== the map's content
def _handmade(root: Path, n: int = 240) -> Path:
    """Sentence pairs of 2-4 words from WORDS, word for word."""
    rng = random.Random(0)
    pairs = []
    for _ in range(n):
        words = rng.sample(sorted(WORDS), rng.randint(2, 4))
        pairs.append((" ".join(words), " ".join(WORDS[w] for w in words)))
    text = root / "text"
    text.mkdir()
    splits = {}
    for split, rows in (("train", slice(0, n - 40)), ("valid", slice(n - 40, None))):
        for side, lang in ((0, "de"), (1, "en")):
            (text / f"{split}.{lang}").write_text("".join(p[side] + "\n" for p in pairs[rows]), encoding="utf-8")
        splits[split] = (text / f"{split}.de", text / f"{split}.en")
    prepare(root / "data", splits, "de", "en", vocab_size=60, log=quiet)
    return root / "data"


@pytest.fixture(scope="module")
def handmade(tmp_path_factory):
    """A hand-made corpus prepared with its own SentencePiece model, a random model of that vocabulary, and its
    float32 export."""
    root = tmp_path_factory.mktemp("shortlist")
    data = _handmade(root)
    model = save_tiny_teacher(root / "model", data, TINY)
    export(model, root / "ct2", quantization="float32", log=quiet)
    return data, model, root / "ct2"


def _read_vmap(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    lines = (folder / VMAP_FILE).read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("\t"), "the always-allowed line comes first"
    return lines[0][1:].split(" "), {k: v.split(" ") for k, v in (line.split("\t") for line in lines[1:])}


def test_the_map_lists_translations_and_always_the_frequent_pieces(handmade, tmp_path):
    data, _, ct2 = handmade
    folder = _copy(ct2, tmp_path / "ct2")
    info = write_shortlist(data, folder, top_n=1, frequent=3, log=quiet)
    always, lines = _read_vmap(folder)
    for de, en in WORDS.items():
        assert lines["▁" + de] == ["▁" + en, "▁" + de], de  # its translation (Dice 1), then itself (a joint vocabulary)
    train = ParallelData.load(data, "train")
    _, tgt_pieces = ct2_vocabularies(folder)
    counts = np.bincount(train.tgt_tokens, minlength=len(tgt_pieces))
    assert always[:4] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert sorted(always[4:], key=lambda p: -counts[tgt_pieces.index(p)]) == always[4:] and len(always) == 7
    assert {tgt_pieces[i] for i in np.argsort(-counts, kind="stable")[:3]} == set(always[4:])
    stored = json.loads((folder / INFO_FILE).read_text())
    assert stored["top_n"] == 1 and stored["frequent"] == 3 and stored == info
    assert 0.9 <= info["coverage"]["recall"] <= 1.0 and info["coverage"]["sentences"] == 40
    assert describe(folder).startswith(f"{folder / VMAP_FILE}: top 1 target pieces per source piece by dice")
    (folder / VMAP_FILE).write_text("\t</s>\n", encoding="utf-8")
    assert "not described by a2d shortlist" in describe(folder)  # changed by hand since
    wide = write_shortlist(data, folder, top_n=5, frequent=0, log=quiet)
    assert wide["always"] == 4 and len(_read_vmap(folder)[1]["▁Hund"]) > 2


# =============================================================================================== what CTranslate2 does
@pytest.fixture(scope="module")
def two_vocabularies(tmp_path_factory, data_root):
    """A random hub model with separate source and target vocabularies (large weights, so that the output depends
    on the source), its float32 export and Multi30k text prepared with its tokenizer."""
    root = tmp_path_factory.mktemp("shortlist-hub")
    model = hub_folder(root / "hf", separate_vocabs=True, init_std=0.5)
    export(model, root / "ct2", quantization="float32", log=quiet)
    src, tgt = corpus_text(300)
    text = root / "text"
    text.mkdir()
    for split, rows in (("train", slice(0, 260)), ("valid", slice(260, None))):
        for lang, lines in (("de", src[rows]), ("en", tgt[rows])):
            (text / f"{split}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    prepare(root / "data", {s: (text / f"{s}.de", text / f"{s}.en") for s in ("train", "valid")}, "de", "en",
            tokenizer=model, log=quiet)
    return root / "data", model, root / "ct2"


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for path in folder.iterdir():
        (to / path.name).write_bytes(path.read_bytes())
    return to


@pytest.mark.parametrize("which", ["handmade", "two_vocabularies"])
def test_a_map_that_allows_every_piece_changes_nothing(which, request, tmp_path):
    data, _, ct2 = request.getfixturevalue(which)
    folder = _copy(ct2, tmp_path / "ct2")
    size = len(ct2_vocabularies(folder)[1])
    write_shortlist(data, folder, top_n=size, frequent=size, log=quiet)
    sources = ParallelData.load(data, "valid").src_text[:16]
    plain, short = CT2Translator(folder), CT2Translator(folder, shortlist=True)
    assert plain.shortlist is None and short.shortlist.startswith(str(folder / VMAP_FILE))
    for beam in (1, 3):
        assert short.translate_ids(sources, beam=beam) == plain.translate_ids(sources, beam=beam)


@pytest.mark.parametrize("which", ["handmade", "two_vocabularies"])
def test_ctranslate2_reads_the_map_and_keeps_to_it(which, request, tmp_path):
    """With one target piece per source piece and no frequent ones, every output piece is one the map allows for
    its batch (CTranslate2 parsed our pieces); without the map the random model goes outside that set."""
    data, _, ct2 = request.getfixturevalue(which)
    folder = _copy(ct2, tmp_path / "ct2")
    write_shortlist(data, folder, top_n=1, frequent=0, log=quiet)
    always, lines = _read_vmap(folder)
    plain, short = CT2Translator(folder), CT2Translator(folder, shortlist=True)
    sources = ParallelData.load(data, "valid").src_text[:12]
    outside = 0
    for text in sources:
        source_pieces = plain.vocab.pieces(plain.vocab.encode(text)) + ["</s>"]
        allowed = set(always) | {p for s in source_pieces for p in lines.get(s, [])}
        [restricted] = short.translate_ids([text], beam=2)
        [free] = plain.translate_ids([text], beam=2)
        assert set(plain.vocab.target_pieces(restricted)) <= allowed, text
        outside += len(set(plain.vocab.target_pieces(free)) - allowed)
    assert outside > 0


@pytest.mark.parametrize("which", ["handmade", "two_vocabularies"])
def test_a_batch_decodes_alike_whatever_batch_came_before(which, request, tmp_path):
    """a2d's own layout (<s>, </s>, <pad> among the first ids, always allowed), and OPUS-MT's, whose <pad> (the
    decoder's start token, the last id) the export moves first: the positions of the pieces CTranslate2 maps stay
    right from batch to batch."""
    data, _, ct2 = request.getfixturevalue(which)
    folder = _copy(ct2, tmp_path / "ct2")
    write_shortlist(data, folder, top_n=1, frequent=0, log=quiet)
    sources = ParallelData.load(data, "valid").src_text
    small, large = sources[:2], sources[2:30]
    for first, then in ((small, large), (large, small)):
        fresh = CT2Translator(folder, shortlist=True).translate_ids(then, beam=2)
        used = CT2Translator(folder, shortlist=True)
        used.translate_ids(first, beam=2)
        assert used.translate_ids(then, beam=2) == fresh


def test_an_export_in_opus_mt_order_is_refused_a_shortlist(two_vocabularies, tmp_path, capsys, monkeypatch):
    """An export that keeps OPUS-MT's order (made before the export moved <pad> first; here with that step switched
    off): CTranslate2 keeps <pad>'s shortened-layer position from a translator's first batch, so a later batch
    decodes from another piece (or fails). a2d shortlist refuses it, so does --shortlist with a map written by hand;
    and the defect is checked with plain ctranslate2, so that the export's reordering can go when it is fixed."""
    data, hf, ct2 = two_vocabularies
    assert read_settings(ct2)["front_ids"] == [0, len(ct2_vocabularies(ct2)[1]) - 1]  # </s> and <pad>
    with monkeypatch.context() as m:
        m.setattr(export_module, "front_order", lambda model: None)
        export(hf, tmp_path / "ct2", quantization="float32", log=quiet)
    folder = tmp_path / "ct2"
    with pytest.raises(UserError, match="a shortlist would give it wrong translations: CTranslate2 .* <pad>"):
        write_shortlist(data, folder, top_n=1, frequent=0, log=quiet)
    assert not (folder / VMAP_FILE).exists()
    assert main(["shortlist", "--data", str(data), "--model", str(folder)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (folder / VMAP_FILE).exists()
    # the same map, written by hand: --shortlist refuses it
    source, target = ct2_vocabularies(folder)
    train = ParallelData.load(data, "train")
    rows, targets = lexical_table((train.src_tokens, train.src_offsets), (train.tgt_tokens, train.tgt_offsets),
                                  len(source), len(target), 1)
    lines = [f"{source[s]}\t{target[t]}\n" for s, t in zip(rows, targets) if " " not in source[s] + target[t]]
    (folder / VMAP_FILE).write_text("\t</s> <unk>\n" + "".join(lines), encoding="utf-8")
    with pytest.raises(UserError, match="a shortlist would give it wrong translations"):
        CT2Translator(folder, shortlist=True)
    # what it guards against, with plain CTranslate2: a batch after another decodes unlike a fresh translator
    vocab = load_translator(folder).vocab
    sources = [vocab.pieces(vocab.encode(t)) for t in ParallelData.load(data, "valid").src_text[:30]]
    kw = dict(beam_size=1, use_vmap=True, max_decoding_length=8)
    fresh = [r.hypotheses[0] for r in ctranslate2.Translator(str(folder)).translate_batch(sources[:2], **kw)]
    used = ctranslate2.Translator(str(folder))
    used.translate_batch(sources[2:], **kw)
    try:
        after = [r.hypotheses[0] for r in used.translate_batch(sources[:2], **kw)]
    except (IndexError, RuntimeError):
        return  # vector::_M_range_check
    assert after != fresh, "CTranslate2 now decodes a batch alike whatever came before: the reordering can go"


# =============================================================================================== the commands
def test_the_commands_say_whether_the_shortlist_is_on(handmade, tmp_path, monkeypatch, capsys):
    data, model, ct2 = handmade
    folder = _copy(ct2, tmp_path / "ct2")

    def translate(*options):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO("Hund rot\nKatze\n".encode())))
        code = main(["translate", "--model", str(folder), "--beam", "2", *options])
        out, err = capsys.readouterr()
        return code, out.splitlines(), err

    code, plain, err = translate()
    assert code == 0 and len(plain) == 2 and err == ""  # no map: nothing to say
    assert main(["shortlist", "--data", str(data), "--model", str(folder), "--top-n", "2", "--frequent", "5"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {folder / VMAP_FILE}" in printed and "--shortlist" in printed
    code, again, err = translate()
    assert code == 0 and again == plain and err.strip() == f"a2d: shortlist off: {folder} has one; give --shortlist to decode with it"
    code, short, err = translate("--shortlist")
    assert code == 0 and len(short) == 2 and err.startswith("a2d: shortlist on: ") and "top 2" in err
    out = tmp_path / "valid.json"
    assert main(["evaluate", "--model", str(folder), "--data", str(data), "--split", "valid", "--beam", "2",
                 "--shortlist", "--out", str(out)]) == 0
    assert "shortlist on: " in capsys.readouterr().out
    assert json.loads(out.read_text())["shortlist"].startswith(str(folder / VMAP_FILE))
    for argv in (["translate", "--model", str(model), "--shortlist"],
                 ["evaluate", "--model", str(model), "--data", str(data), "--split", "valid", "--shortlist"],
                 ["translate", "--model", str(ct2), "--shortlist"]):
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"Hund\n")))
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith("a2d: error: --shortlist: "), err
        assert ("not a CTranslate2 export" if argv[2] == str(model) else f"has no {VMAP_FILE}") in err


def test_bad_input_is_refused_in_one_line_and_nothing_is_written(handmade, tmp_path, capsys, data_root):
    data, model, ct2 = handmade
    folder = _copy(ct2, tmp_path / "ct2")
    write_shortlist(data, folder, top_n=2, frequent=1, log=quiet)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    other = tmp_path / "other"
    prepare(other, {s: (data / f"{s}.de", data / f"{s}.en") for s in ("train", "valid")}, "de", "en", vocab_size=40,
            log=quiet)
    cases = [
        (["--data", str(tmp_path / "nothing"), "--model", str(folder)], "not a prepared data directory"),
        (["--data", str(other), "--model", str(folder)], "another vocabulary"),
        (["--data", str(data), "--model", str(folder), "--top-n", "0"], "--top-n 0: must be at least 1"),
        (["--data", str(data), "--model", str(folder), "--frequent", "-1"], "--frequent -1: must be at least 0"),
        (["--data", str(data), "--model", str(model)], "not an a2d export"),
        (["--data", str(data), "--model", str(tmp_path / "nothing")], "not an a2d export"),
    ]
    for argv, message in cases:
        assert main(["shortlist", *argv]) == 2, argv
        out, err = capsys.readouterr()
        assert err.startswith("a2d: error: ") and err.count("\n") == 1 and message in err, err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # no file changed, no temporary one left


# =============================================================================================== benchmarks/speed.py
def test_speed_times_ct2_with_and_without_the_shortlist(handmade, tmp_path):
    data, _, ct2 = handmade
    folder = _copy(ct2, tmp_path / "ct2")
    write_shortlist(data, folder, log=quiet)
    r = speed.measure("ct2-float32", str(folder), str(data), "valid", 1, [2], 500, 1, force_length=3, shortlist=True)
    assert r["engine"] == "ct2-float32+shortlist" and r["runs"]["beam2"]["target_tokens"] == 40 * 3
    with pytest.raises(ValueError):
        speed.measure("hf-fp32", str(folder), str(data), "valid", 1, [2], 500, 1, shortlist=True)
    p = speed.parser()
    base = ["--data", str(data), "--split", "valid", "--teacher", str(handmade[1]), "--out", str(tmp_path / "speed")]
    with pytest.raises(UserError, match="--shortlist: for the CTranslate2 engines"):
        speed.check(p.parse_args(base + ["--engines", "hf-fp32", "--shortlist"]))
    with pytest.raises(UserError, match="--top-n/--frequent: used with --shortlist only"):
        speed.check(p.parse_args(base + ["--top-n", "5"]))
    with pytest.raises(UserError, match="--top-n 0"):
        speed.check(p.parse_args(base + ["--shortlist", "--top-n", "0"]))
    args = p.parse_args(base + ["--shortlist", "--engines", "ct2-int8"])
    speed.check(args)
    assert (args.top_n, args.frequent) == (50, 100)
    out = tmp_path / "speed-sl"  # one run: the export timed without, then with its shortlist (two fresh processes)
    assert speed.main(base[:-1] + [str(out), "--engines", "ct2-int8", "--shortlist", "--top-n", "3", "--beam", "2", "--threads", "1",
                                   "--force-length", "3", "--latency-sentences", "1", "--sentences", "5"]) == 0
    report = json.loads(out.with_name("speed-sl.json").read_text())
    plain, short = report["results"]
    assert (plain["engine"], short["engine"]) == ("ct2-int8", "ct2-int8+shortlist")
    # the plain row's folder is the export as it was, without the map the shortlist row reads
    assert short["folder_bytes"] > plain["folder_bytes"] and short["weights_bytes"] == plain["weights_bytes"]
    assert report["settings"]["shortlist"] == {"top_n": 3, "frequent": 100}
    assert "ct2-int8+shortlist" in out.with_name("speed-sl.md").read_text()


def _row(engine, tok, bleu):
    return {"model": "S", "engine": engine, "threads": 1, "latency_ms": {},
            "runs": {"beam5": {"tokens_per_s": tok, "bleu": bleu, "chrf": 50.0, "sentences_per_s": 1.0}}}


@pytest.mark.parametrize("tok, bleu, met", [(1600, 30.0, (True, True)), (1400, 29.85, (False, True)),
                                            (2000, 29.7, (True, False))])
def test_speed_judges_the_shortlist_target(tok, bleu, met):
    rows = [_row("ct2-int8", 1000, 30.0), _row("ct2-int8+shortlist", tok, bleu)]
    found = {t["name"]: t for t in speed.targets(rows, "S")}
    assert (found["shortlist speed"]["met"], found["shortlist BLEU"]["met"]) == met
    assert "shortlist speed" not in {t["name"] for t in speed.targets(rows[:1], "S")}
    forced = {t["name"]: t for t in speed.targets(rows, "S", forced=True)}
    assert forced["shortlist BLEU"]["met"] is None

"""Teacher-output caching for word-level KD: the cache equals the live teacher, resumes, refuses a mismatch."""
from __future__ import annotations

import json

import pytest
import torch

from a2d.config import load_config
from a2d.data.batching import collate, token_batches
from a2d.data.corpus import locate_corpus
from a2d.data.prepare import ParallelData, prepare
from a2d.data.vocab import Vocabulary
from a2d.losses import word_kd
from a2d.models import build_model, load_model
from a2d.recipes import cache_teacher
from a2d.recipes.cache_teacher import build_cache
from a2d.teacher_cache import INDEX_FILE, IDS_KEY, PROBS_KEY, TeacherCache, cached_word_kd, kd_loss
from a2d.tokenizer import collate_ids
from a2d.training import model_inputs
from a2d.utils import UserError
from tests.recipes.conftest import TINY
from tests.tiny import quiet, save_tiny_teacher, tiny_corpus

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory, data_root):
    return tiny_corpus(tmp_path_factory.mktemp("cache-data") / "m30k", 240)


def save_teacher(path, data_dir, seed=7):
    """An untrained teacher whose output bias makes its distributions peaked (max probability ~0.3), as a
    trained one's are, so that fp16 rounding of small probabilities is exercised."""
    return save_tiny_teacher(path, data_dir, TINY, seed, bias_std=3.0)


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "t", tiny_data)


@pytest.fixture(scope="module")
def full_cache(tiny_data, teacher, tmp_path_factory):
    """K = the vocabulary size: every probability of the teacher, fp16."""
    out = tmp_path_factory.mktemp("cache") / "full"
    build_cache(teacher, tiny_data, out, topk=len(Vocabulary.load(tiny_data)), shard_size=100, log=quiet)
    return out


def batch_of(data, vocab, indices):
    return collate([data[i] for i in indices], **collate_ids(vocab))


def live_teacher_logits(teacher_dir, batch):
    model, _ = load_model(teacher_dir)
    model.eval()
    with torch.no_grad():
        return model(**model_inputs(batch)).logits


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_vocabulary_cache_gives_the_live_kd_loss(tiny_data, teacher, full_cache, temperature):
    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    cache = TeacherCache(full_cache)
    cache.check(tiny_data, data, vocab, teacher)
    assert cache.topk == len(vocab)
    # a training batch (length-sorted, shuffled) across shards, with padding
    indices = token_batches(data.src_lens, data.tgt_lens, 1024, shuffle=True, seed=3, epoch=1)[0]
    assert len({i // 100 for i in indices}) > 1
    batch = batch_of(data, vocab, indices)
    assert batch["labels"].eq(-100).any()
    cached = cache.lookup(indices, batch["labels"].shape[1])
    t_logits = live_teacher_logits(teacher, batch)
    student = build_model(load_config("tiny-student", TINY), len(vocab), seed=1)
    s_logits = student(**model_inputs(batch)).logits.detach().requires_grad_(True)
    live = word_kd(s_logits, t_logits, batch["labels"], temperature)
    from_cache = cached_word_kd(s_logits, cached[IDS_KEY], cached[PROBS_KEY], batch["labels"], temperature)
    torch.testing.assert_close(from_cache, live, rtol=1e-3, atol=1e-5)  # fp16 probabilities
    # the same gradients reach the student
    g_live, = torch.autograd.grad(live, s_logits, retain_graph=True)  # both share the memoised log-probs
    g_cache, = torch.autograd.grad(from_cache, s_logits)
    torch.testing.assert_close(g_cache, g_live, rtol=0, atol=2e-5)
    # kd_loss takes the cache when the batch carries it, the live logits otherwise
    out = type("Out", (), {"logits": t_logits})()
    torch.testing.assert_close(kd_loss(s_logits, None, {**batch, **cached}, temperature), from_cache)
    torch.testing.assert_close(kd_loss(s_logits, out, batch, temperature), live)


def test_top_k_is_the_renormalised_teacher_distribution(tiny_data, teacher, tmp_path):
    """K < V: the KL to the teacher's top-K probabilities renormalised (tempered within the top K)."""
    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    build_cache(teacher, tiny_data, tmp_path / "k8", topk=8, log=quiet)
    cache = TeacherCache(tmp_path / "k8")
    indices = [5, 17, 3, 200]
    batch = batch_of(data, vocab, indices)
    labels = batch["labels"]
    mask = labels.ne(-100)
    cached = cache.lookup(indices, labels.shape[1])
    t_logits = live_teacher_logits(teacher, batch)
    top = t_logits.float().topk(8, dim=-1)
    assert torch.equal(cached[IDS_KEY][mask], top.indices[mask])
    torch.testing.assert_close(cached[PROBS_KEY][mask].float(), t_logits.float().softmax(-1).gather(-1, top.indices)[mask],
                               rtol=1e-3, atol=1e-6)
    assert cached[PROBS_KEY][~mask].eq(0).all()
    s_logits = build_model(load_config("tiny-student", TINY), len(vocab), seed=1)(**model_inputs(batch)).logits
    for temperature in (1.0, 2.0):
        q = (top.values[mask] / temperature).softmax(-1)  # the teacher's tempered distribution within its top 8
        s = (s_logits[mask].float() / temperature).log_softmax(-1).gather(-1, top.indices[mask])
        expected = (q * (q.log() - s)).sum(-1).mean() * temperature ** 2
        got = cached_word_kd(s_logits, cached[IDS_KEY], cached[PROBS_KEY], labels, temperature)
        torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-4)


def test_an_interrupted_build_resumes_to_the_same_files(tiny_data, teacher, full_cache, tmp_path, monkeypatch):
    whole = tmp_path / "whole"
    build_cache(teacher, tiny_data, whole, topk=16, shard_size=50, log=quiet)
    real, calls = cache_teacher.compute_shard, []

    def killed_at_third(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    part = tmp_path / "part"
    monkeypatch.setattr(cache_teacher, "compute_shard", killed_at_third)
    with pytest.raises(KeyboardInterrupt):
        build_cache(teacher, tiny_data, part, topk=16, shard_size=50, log=quiet)
    index = json.loads((part / INDEX_FILE).read_text())
    assert not index["complete"] and [s["start"] for s in index["shards"]] == [0, 50]
    with pytest.raises(UserError, match="unfinished"):
        TeacherCache(part)
    # what a kill during a write leaves: a temporary file, and a shard renamed but not yet listed
    (part / ".shard-00002.safetensors.x1y2.tmp").write_bytes(b"half")
    (part / "shard-00002.safetensors").write_bytes(b"not listed")
    monkeypatch.setattr(cache_teacher, "compute_shard", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    calls.clear()
    lines = []
    build_cache(teacher, tiny_data, part, topk=16, shard_size=50, log=lines.append)
    assert calls == [100, 150, 200]  # the finished shards were kept
    assert any("resuming" in line and "2 unfinished file(s) removed" in line for line in lines)
    names = sorted(p.name for p in whole.iterdir())
    assert names == sorted(p.name for p in part.iterdir())
    assert [n for n in names if n.startswith("shard-")] == [f"shard-{i:05d}.safetensors" for i in range(5)]
    for name in names:
        if name != INDEX_FILE:
            assert (whole / name).read_bytes() == (part / name).read_bytes(), name
    a, b = (json.loads((d / INDEX_FILE).read_text()) for d in (whole, part))
    for d in (a, b):
        for key in ("created", "finished"):
            d.pop(key)
        for s in d["shards"]:
            s.pop("seconds")
    assert a == b and a["complete"]
    assert a["bytes"] == sum(p.stat().st_size for p in whole.glob("shard-*"))
    assert a["positions"] == int((ParallelData.load(tiny_data, "train").tgt_lens + 1).sum())
    # a finished cache is only reported; rerunning with another K is refused
    calls.clear()
    lines = []
    build_cache(teacher, tiny_data, part, topk=16, shard_size=50, log=lines.append)
    assert calls == [] and "already complete" in lines[-1] and "MB" in lines[-1]
    with pytest.raises(UserError, match="--cache-topk"):
        build_cache(teacher, tiny_data, part, topk=8, shard_size=50, log=quiet)


def test_a_cache_of_another_teacher_or_other_data_is_refused(tiny_data, teacher, full_cache, tmp_path):
    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    cache = TeacherCache(full_cache)
    other_teacher = save_teacher(tmp_path / "other-teacher", tiny_data, seed=8)
    with pytest.raises(UserError, match="another teacher"):
        cache.check(tiny_data, data, vocab, other_teacher)
    # other training data with the same tokenizer
    other = tmp_path / "other-data"
    prepare(other, locate_corpus("multi30k", "de", "en"), "de", "en", max_train=120,
            vocab=tiny_data / "sentencepiece.model", log=quiet)
    with pytest.raises(UserError, match="other training data"):
        cache.check(other, ParallelData.load(other, "train"), Vocabulary.load(other), teacher)
    # another tokenizer
    third = tmp_path / "third-data"
    prepare(third, locate_corpus("multi30k", "de", "en"), "de", "en", vocab_size=300, max_train=240, log=quiet)
    with pytest.raises(UserError, match="another tokenizer"):
        cache.check(third, ParallelData.load(third, "train"), Vocabulary.load(third), teacher)
    # the build refuses bad options and a folder that is not a cache
    with pytest.raises(UserError, match="--cache-topk 0"):
        build_cache(teacher, tiny_data, tmp_path / "c", topk=0, log=quiet)
    with pytest.raises(UserError, match="larger than the vocabulary"):
        build_cache(teacher, tiny_data, tmp_path / "c", topk=len(vocab) + 1, log=quiet)
    with pytest.raises(UserError, match="holds no teacher cache"):
        build_cache(teacher, tiny_data, other, topk=4, log=quiet)
    with pytest.raises(UserError, match="not a teacher cache"):
        TeacherCache(other)


def test_distill_data_command(tiny_data, teacher, tmp_path, capsys):
    from a2d.cli import main

    base = ["distill-data", "--teacher", str(teacher), "--data", str(tiny_data), "--out", str(tmp_path / "c")]
    assert main(base + ["--cache-topk", "4", "--shard-size", "100"]) == 0
    out = capsys.readouterr().out
    assert "wrote" in out and "MB" in out and "3 shard(s)" in out
    for extra, message in ((["--cache-topk", "0"], "--cache-topk 0: must be at least 1"),
                           (["--cache-topk", "4", "--beam", "4"], "--beam: not used with --cache-topk"),
                           (["--max-tokens", "100"], "--max-tokens: used with --cache-topk only"),
                           (["--cache-topk", "4", "--max-tokens", "5"], "--max-tokens 5: smaller than")):
        assert main(base[:-1] + [str(tmp_path / "d"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


# --------------------------------------------------------------------------------------------- training from a cache
def distill_cfg(method, *extra):
    return load_config("tiny-student", TINY + [f"method={method}", "max_steps=2", "valid_max_sentences=8", *extra])


@pytest.mark.parametrize("method", ["kd", "a2d"])
def test_distill_step_from_a_full_cache_equals_the_live_teacher(method, tiny_data, teacher, full_cache, monkeypatch):
    """With kd_cache the KD term reads the cache: kd never runs the teacher, a2d runs its body (no lm_head)
    for the attention maps; with K = V every loss term equals the live teacher's (fp16 probabilities)."""
    from a2d.methods import Progress, get_method
    from a2d.models import use_attention_maps
    from a2d.recipes.distill import distill_step, load_teacher

    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    cfg = distill_cfg(method, f"kd_cache={full_cache}")
    t = load_teacher(teacher, vocab, tiny_data)
    student = build_model(cfg, len(vocab), seed=1)
    m = get_method(method)(cfg, student.config, t.config)
    m.attach(student, t)
    if method == "a2d":
        use_attention_maps(student)
        use_attention_maps(t)
    student.eval()  # no dropout: the two steps see the same student
    indices = token_batches(data.src_lens, data.tgt_lens, 1024, shuffle=True, seed=3, epoch=1)[0]
    batch = batch_of(data, vocab, indices)
    progress = Progress(epoch=0, update=0, updates_per_epoch=10)
    live, _ = distill_step(student, t, m, batch, cfg, progress)
    calls = []
    t.register_forward_pre_hook(lambda *a: calls.append("lm"))
    t.model.register_forward_pre_hook(lambda *a: calls.append("body"))
    cached_batch = {**batch, **TeacherCache(full_cache).lookup(indices, batch["labels"].shape[1])}
    cached, _ = distill_step(student, t, m, cached_batch, cfg, progress)
    assert calls == ([] if method == "kd" else ["body"])
    assert set(cached) == set(live)
    for name in live:
        torch.testing.assert_close(cached[name], live[name], rtol=1e-3, atol=1e-5, msg=name)


def test_distill_with_kd_cache_trains_and_refuses_what_does_not_fit(tiny_data, teacher, full_cache, tmp_path):
    from a2d.recipes.distill import distill

    logs = []
    result = distill(distill_cfg("kd", f"kd_cache={full_cache}"), tiny_data, tmp_path / "kd", teacher,
                     log=logs.append)
    assert result.state.update == 2 and (tmp_path / "kd" / "best" / "model.safetensors").is_file()
    assert any("the teacher does not run" in line for line in logs), logs
    result = distill(distill_cfg("a2d", f"kd_cache={full_cache}"), tiny_data, tmp_path / "a2d", teacher,
                     log=logs.append)
    assert result.state.update == 2 and any("attention maps only" in line for line in logs)
    for method, extra, message in (("pkd", [], "does not read a teacher cache"),
                                   ("kd", [f"kd_cache={tmp_path / 'nowhere'}"], "no such folder")):
        extra = extra or [f"kd_cache={full_cache}"]
        with pytest.raises(UserError, match=message):
            distill(distill_cfg(method, *extra), tiny_data, tmp_path / f"x-{method}", teacher, log=quiet)
        assert not (tmp_path / f"x-{method}").exists()  # refused before the run folder is made
    other = save_teacher(tmp_path / "other-teacher", tiny_data, seed=8)
    with pytest.raises(UserError, match="another teacher"):
        distill(distill_cfg("kd", f"kd_cache={full_cache}"), tiny_data, tmp_path / "x-other", other, log=quiet)

"""Teacher-output caching for word-level KD: the cache equals the live teacher, resumes, refuses a mismatch
(another teacher, its config, other data, another temperature, an older format)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from a2d.cli import _message
from a2d.data.batching import collate, token_batches
from a2d.data.corpus import locate_corpus
from a2d.data.prepare import ParallelData, prepare
from a2d.data.vocab import Vocabulary
from a2d.losses import IDS_KEY, LOGP_KEY, REST_KEY, cached_word_kd, kd_loss, word_kd
from a2d.errors import BadValue
from a2d.models import build_model, load_model
from a2d.recipes import cache_teacher
from a2d.recipes.cache_teacher import build_cache
from a2d.settings import load_config
from a2d.teacher_cache import INDEX_FILE, TeacherCache
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
    trained one's are: many probabilities are tiny (the format-1 cache rounded them in fp16)."""
    return save_tiny_teacher(path, data_dir, TINY, seed, bias_std=3.0)


@pytest.fixture(scope="module")
def teacher(tiny_data, tmp_path_factory):
    return save_teacher(tmp_path_factory.mktemp("teacher") / "t", tiny_data)


@pytest.fixture(scope="module")
def full_caches(tiny_data, teacher, tmp_path_factory):
    """K = the vocabulary size: every log-probability of the teacher, at each temperature as it is asked for."""
    made = {}

    def at(temperature):
        if temperature not in made:
            out = tmp_path_factory.mktemp("cache") / f"full-t{temperature:g}"
            build_cache(teacher, tiny_data, out, topk=len(Vocabulary.load(tiny_data)), shard_size=100,
                        temperature=temperature, log=quiet)
            made[temperature] = out
        return made[temperature]
    return at


@pytest.fixture(scope="module")
def full_cache(full_caches):
    """K = V at temperature 1."""
    return full_caches(1.0)


def batch_of(data, vocab, indices):
    return collate([data[i] for i in indices], **collate_ids(vocab))


def live_teacher_logits(teacher_dir, batch):
    model, _ = load_model(teacher_dir)
    model.eval()
    with torch.no_grad():
        return model(**model_inputs(batch)).logits


def student_logits(vocab, batch, seed=1):
    student = build_model(load_config("tiny-student", TINY), len(vocab), seed=seed)
    return student(**model_inputs(batch)).logits.detach()


def value_and_grad(loss_fn, logits):
    logits = logits.detach().clone().requires_grad_(True)
    loss = loss_fn(logits)
    grad, = torch.autograd.grad(loss, logits)
    return loss.detach(), grad


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_full_vocabulary_cache_gives_the_live_kd_loss_and_gradient(tiny_data, teacher, full_caches, temperature):
    """K = V, built at the run's temperature: the cached KD term and its gradient are the live ones (the
    format-1 cache, fp16 probabilities at T = 1 re-tempered, was 5% off at T = 2 and 75% off at T = 4)."""
    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    cache = TeacherCache(full_caches(temperature))
    cache.check(tiny_data, data, vocab, teacher)
    cache.check_temperature(temperature)
    assert cache.topk == len(vocab) and cache.temperature == temperature
    # a training batch (length-sorted, shuffled) across shards, with padding
    indices = token_batches(data.src_lens, data.tgt_lens, 1024, shuffle=True, seed=3, epoch=1)[0]
    assert len({i // 100 for i in indices}) > 1
    batch = batch_of(data, vocab, indices)
    labels = batch["labels"]
    assert labels.eq(-100).any()
    cached = cache.lookup(indices, labels.shape[1])
    assert torch.isinf(cached[REST_KEY][labels.ne(-100)]).all()  # nothing left outside the top V
    t_logits = live_teacher_logits(teacher, batch)
    s_logits = student_logits(vocab, batch)
    token_mask = torch.rand(labels.shape, generator=torch.Generator().manual_seed(4)) > 0.5  # selective KD
    for mask in (None, token_mask):
        live, g_live = value_and_grad(lambda s: word_kd(s, t_logits, labels, temperature, mask), s_logits)
        from_cache, g_cache = value_and_grad(
            lambda s: cached_word_kd(s, cached[IDS_KEY], cached[LOGP_KEY], cached[REST_KEY], labels, temperature,
                                     mask), s_logits)
        assert live > 0.1
        assert torch.allclose(from_cache, live, rtol=1e-5, atol=1e-6), (from_cache, live)
        assert torch.isfinite(g_cache).all()
        assert torch.allclose(g_cache, g_live, rtol=1e-4, atol=1e-8), (g_cache - g_live).abs().max()
    # kd_loss takes the cache when the batch carries it, the live logits otherwise
    out = type("Out", (), {"logits": t_logits})()
    s = s_logits.clone()
    torch.testing.assert_close(kd_loss(s, None, {**batch, **cached}, temperature),
                               cached_word_kd(s, cached[IDS_KEY], cached[LOGP_KEY], cached[REST_KEY], labels,
                                              temperature))
    torch.testing.assert_close(kd_loss(s, out, batch, temperature), word_kd(s, t_logits, labels, temperature))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_cache_holds_the_tempered_log_probabilities_and_the_rest(tiny_data, teacher, tmp_path, temperature):
    """K < V: the live teacher's top-K ids, their tempered log-probabilities in fp32, and the log-mass of the
    rest of the vocabulary; K + 1 buckets that sum to 1."""
    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    build_cache(teacher, tiny_data, tmp_path / "k8", topk=8, temperature=temperature, log=quiet)
    cache = TeacherCache(tmp_path / "k8")
    indices = [5, 17, 3, 200]
    batch = batch_of(data, vocab, indices)
    labels = batch["labels"]
    mask = labels.ne(-100)
    cached = cache.lookup(indices, labels.shape[1])
    assert cached[LOGP_KEY].dtype == cached[REST_KEY].dtype == torch.float32
    t = (live_teacher_logits(teacher, batch).float() / temperature).log_softmax(-1)
    top = t.topk(8, dim=-1)
    assert torch.equal(cached[IDS_KEY][mask], top.indices[mask])
    torch.testing.assert_close(cached[LOGP_KEY][mask], top.values[mask], rtol=1e-5, atol=1e-5)
    rest = t.scatter(-1, top.indices, float("-inf")).logsumexp(-1)
    torch.testing.assert_close(cached[REST_KEY][mask], rest[mask], rtol=1e-5, atol=1e-5)
    assert (cached[REST_KEY][mask] > -20).all()  # the top 8 leave mass outside
    total = torch.cat([cached[LOGP_KEY], cached[REST_KEY].unsqueeze(-1)], -1).logsumexp(-1)
    torch.testing.assert_close(total[mask], torch.zeros_like(total[mask]), rtol=0, atol=1e-5)
    assert cached[LOGP_KEY][~mask].eq(0).all() and cached[REST_KEY][~mask].eq(0).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_student_equal_to_the_teacher_is_the_minimum_of_the_top_k_cached_loss(tiny_data, teacher, tmp_path,
                                                                                 temperature):
    """K < V: a student whose logits are the teacher's gets loss 0 and gradient 0 through the cache, the batch
    and kd_loss as training reads them; another student a positive loss, at most the live one. The format-1
    cache renormalised over the top K: the teacher itself then had a loss (-log of its top-K mass) and a
    gradient (at T = 1 too)."""
    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    build_cache(teacher, tiny_data, tmp_path / "k8", topk=8, temperature=temperature, log=quiet)
    cache = TeacherCache(tmp_path / "k8")
    indices = token_batches(data.src_lens, data.tgt_lens, 1024, shuffle=True, seed=3, epoch=1)[0]
    batch = batch_of(data, vocab, indices)
    batch = {**batch, **cache.lookup(indices, batch["labels"].shape[1])}
    t_logits = live_teacher_logits(teacher, batch)
    loss, grad = value_and_grad(lambda s: kd_loss(s, None, batch, temperature), t_logits)
    assert abs(loss.item()) < 1e-5, loss
    assert grad.abs().max().item() < 1e-6, grad.abs().max()
    s_logits = student_logits(vocab, batch)
    loss, grad = value_and_grad(lambda s: kd_loss(s, None, batch, temperature), s_logits)
    live = word_kd(s_logits, t_logits, batch["labels"], temperature)
    assert 0.01 < loss.item() <= live.item() * (1 + 1e-5), (loss, live)
    assert grad.abs().max() > 1e-4


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
    with pytest.raises(BadValue, match="a cache of another topk; rerun with the same teacher, data_dir, topk and "
                                       "temperature") as refused:
        build_cache(teacher, tiny_data, part, topk=8, shard_size=50, log=quiet)
    assert _message(refused.value) == (f"--out {part}: a cache of another --cache-topk; rerun with the same --teacher, "
                                       "--data, --cache-topk and --kd-temperature, or choose another --out")


def test_a_cache_of_another_teacher_or_other_data_is_refused(tiny_data, teacher, full_cache, tmp_path):
    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    cache = TeacherCache(full_cache)
    other_teacher = save_teacher(tmp_path / "other-teacher", tiny_data, seed=8)
    with pytest.raises(UserError, match="another teacher"):
        cache.check(tiny_data, data, vocab, other_teacher)
    # the same weights with another config.json (the format-1 identity held the weights only)
    changed = tmp_path / "changed-config"
    shutil.copytree(teacher, changed)
    config = json.loads((changed / "config.json").read_text())
    config["scale_embedding"] = not config.get("scale_embedding", False)
    (changed / "config.json").write_text(json.dumps(config, indent=2))
    with pytest.raises(UserError, match="another config.json") as refused:
        cache.check(tiny_data, data, vocab, changed)
    assert len(str(refused.value).splitlines()) == 1 and str(changed) in str(refused.value)
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
    with pytest.raises(UserError, match="topk=0: must be at least 1"):
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
    assert main(base[:-1] + [str(tmp_path / "t2"), "--cache-topk", "4", "--kd-temperature", "2"]) == 0
    capsys.readouterr()
    assert TeacherCache(tmp_path / "t2").temperature == 2.0 and TeacherCache(tmp_path / "c").temperature == 1.0
    for extra, message in ((["--cache-topk", "0"], "--cache-topk 0: must be at least 1"),
                           (["--cache-topk", "4", "--kd-temperature", "0"], "--kd-temperature 0: must be at least"),
                           (["--cache-topk", "4", "--kd-temperature", "nan"], "--kd-temperature nan: must be"),
                           (["--kd-temperature", "2"], "--kd-temperature: used with --cache-topk only"),
                           (["--cache-topk", "4", "--beam", "4"], "--beam: not used with --cache-topk"),
                           (["--max-tokens", "100"], "--max-tokens: used with --cache-topk only"),
                           (["--cache-attention"], "--cache-attention: used with --cache-topk only"),
                           (["--cache-topk", "4", "--max-tokens", "5"], "--max-tokens 5: smaller than")):
        assert main(base[:-1] + [str(tmp_path / "d"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------------------------- training from a cache
def distill_cfg(method, *extra):
    return load_config("tiny-student", TINY + [f"method={method}", "max_steps=2", "valid_max_sentences=8", *extra])


def live_and_cached_steps(student, teacher, method, cfg, batch, progress, entries):
    """One distill step with the live teacher, then one with the cache's ``entries`` added to the batch; and the
    second step's calls of the teacher (``lm``: the whole model, ``body``: without its output layer)."""
    from a2d.recipes.distill import distill_step

    live, _ = distill_step(student, teacher, method, batch, cfg, progress)
    calls = []
    teacher.register_forward_pre_hook(lambda *a: calls.append("lm"))
    teacher.model.register_forward_pre_hook(lambda *a: calls.append("body"))
    cached, _ = distill_step(student, teacher, method, {**batch, **entries}, cfg, progress)
    return live, cached, calls


@pytest.mark.parametrize("method", ["kd", "a2d"])
def test_distill_step_from_a_full_cache_equals_the_live_teacher(method, tiny_data, teacher, full_cache, monkeypatch):
    """With kd_cache the KD term reads the cache: kd never runs the teacher, a2d runs its body (no lm_head)
    for the attention maps; with K = V every loss term equals the live teacher's."""
    from a2d.methods import Progress, get_method
    from a2d.models import use_attention_maps
    from a2d.recipes.distill import load_teacher

    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    cfg = distill_cfg(method, f"kd_cache={full_cache}")
    t = load_teacher(teacher, vocab, tiny_data)
    student = build_model(cfg, len(vocab), seed=1)
    m = get_method(method)(cfg.settings, student.config, t.config)
    m.attach(student, t)
    if method == "a2d":
        use_attention_maps(student)
        use_attention_maps(t)
    student.eval()  # no dropout: the two steps see the same student
    indices = token_batches(data.src_lens, data.tgt_lens, 1024, shuffle=True, seed=3, epoch=1)[0]
    batch = batch_of(data, vocab, indices)
    progress = Progress(epoch=0, update=0, updates_per_epoch=10)
    live, cached, calls = live_and_cached_steps(student, t, m, cfg, batch, progress,
                                                TeacherCache(full_cache).lookup(indices, batch["labels"].shape[1]))
    assert calls == ([] if method == "kd" else ["body"])
    assert set(cached) == set(live)
    for name in live:
        torch.testing.assert_close(cached[name], live[name], rtol=1e-5, atol=1e-6, msg=name)


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


def test_a_cache_built_at_another_temperature_is_refused(tiny_data, teacher, full_caches, tmp_path):
    """Built at T = 2, trained at kd_temperature = 1 (and the reverse): one line naming both temperatures and
    the command that builds a matching cache, before the run folder exists."""
    from a2d.recipes.distill import distill

    for built, run in ((2.0, 1.0), (1.0, 2.0)):
        cache = full_caches(built)
        out = tmp_path / f"run-{built:g}-{run:g}"
        with pytest.raises(UserError) as refused:
            distill(distill_cfg("kd", f"kd_cache={cache}", f"kd_temperature={run}"), tiny_data, out, teacher,
                    log=quiet)
        message = str(refused.value)
        assert len(message.splitlines()) == 1, message
        assert f"built at temperature {built:g}" in message and f"kd_temperature is {run:g}" in message
        assert f"a2d distill-data --teacher {teacher} --data {tiny_data}" in message
        assert f"--kd-temperature {run:g}" in message.split("a2d distill-data")[1]
        assert not out.exists()
    TeacherCache(full_caches(2.0)).check_temperature(2.0)  # the matching run is accepted
    # a build at another temperature does not continue a cache: it is refused and nothing changes
    before = {p.name: p.read_bytes() for p in full_caches(2.0).iterdir()}
    with pytest.raises(UserError, match="a cache of another temperature"):
        build_cache(teacher, tiny_data, full_caches(2.0), topk=len(Vocabulary.load(tiny_data)), shard_size=100,
                    temperature=1.0, log=quiet)
    assert {p.name: p.read_bytes() for p in full_caches(2.0).iterdir()} == before


def format_1_cache(new: Path, old: Path) -> None:
    """``new`` (a format-2 cache at T = 1) rewritten as commit 82e3b08 wrote caches: format 1, fp16
    probabilities at temperature 1, a teacher identity without its config."""
    shutil.copytree(new, old)
    index = json.loads((old / INDEX_FILE).read_text())
    for shard in index["shards"]:
        tensors = load_file(old / shard["file"])
        save_file({"ids": tensors["ids"], "probs": tensors["logp"].exp().half(), "offsets": tensors["offsets"]},
                  old / shard["file"], metadata={"format": index["kind"]})
        shard["bytes"] = (old / shard["file"]).stat().st_size
    for key in ("temperature", "log_probabilities"):
        index.pop(key)
    index["teacher"].pop("config_sha256")
    index.update(format=1, probabilities="softmax of the teacher's logits at temperature 1 (kd_temperature is "
                 "applied in training)", dtypes={"ids": index["dtypes"]["ids"], "probs": "float16", "offsets": "int64"})
    (old / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def test_an_old_format_cache_is_refused(tiny_data, teacher, full_cache, tmp_path):
    """A format-1 cache (fp16 probabilities at T = 1) is refused with one line telling to rebuild it, by
    training and by a build into it, which leaves it untouched."""
    from a2d.recipes.distill import distill

    old = tmp_path / "old"
    format_1_cache(full_cache, old)
    before = {p.name: p.read_bytes() for p in old.iterdir()}
    with pytest.raises(UserError) as refused:
        TeacherCache(old)
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "format 1" in message and "rebuild it with `a2d distill-data" in message
    with pytest.raises(UserError, match="format 1"):
        distill(distill_cfg("kd", f"kd_cache={old}"), tiny_data, tmp_path / "run", teacher, log=quiet)
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match="format 1.*rebuild"):
        build_cache(teacher, tiny_data, old, topk=len(Vocabulary.load(tiny_data)), shard_size=100, log=quiet)
    assert {p.name: p.read_bytes() for p in old.iterdir()} == before


# ----------------------------------------------------------------------------------- the teacher's attention maps
@pytest.fixture(scope="module")
def attention_cache(tiny_data, teacher, tmp_path_factory):
    """K = V and the teacher's attention maps, in three shards."""
    out = tmp_path_factory.mktemp("cache") / "full-att"
    build_cache(teacher, tiny_data, out, topk=len(Vocabulary.load(tiny_data)), shard_size=100, attention=True,
                log=quiet)
    return out


def live_maps(teacher_dir, batch):
    from a2d.attention import collect_attention
    from a2d.models import use_attention_maps

    model, _ = load_model(teacher_dir)
    use_attention_maps(model)
    model.eval()
    with torch.no_grad():
        return collect_attention(model(**model_inputs(batch), output_attentions=True), batch)


def test_an_attention_cache_holds_the_live_teachers_maps(tiny_data, teacher, attention_cache):
    """Every head of every kind, for a shuffled batch (other padding than the build's): the live teacher's maps
    on each example's real cells (float16), 0 elsewhere; the index says what it holds."""
    from a2d.attention import KINDS, TEACHER_MAPS

    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    cache = TeacherCache(attention_cache)
    cache.check(tiny_data, data, vocab, teacher)
    assert cache.attention["kinds"] == list(KINDS)
    assert cache.attention["layers"] == {k: 2 for k in KINDS} and len(cache.index["shards"]) == 3
    indices = token_batches(data.src_lens, data.tgt_lens, 1024, shuffle=True, seed=3, epoch=1)[0]
    batch = batch_of(data, vocab, indices)
    cached = cache.lookup_maps(indices, batch, KINDS)
    live = live_maps(teacher, batch)
    for kind in KINDS:
        maps = cached[TEACHER_MAPS[kind]]
        assert maps.dtype == torch.float16 and maps.shape == live[kind].maps.shape
        valid = live[kind].valid()[:, None].expand_as(maps)
        torch.testing.assert_close(maps.float()[valid], live[kind].maps[valid], rtol=2e-3, atol=1e-4, msg=kind)
        assert maps[~live[kind].query_mask[:, None, :, None].expand_as(maps)].abs().max() == 0
        # the maps are distributions over each real query's allowed keys
        rows = maps.float().sum(-1)[live[kind].query_mask[:, None, :].expand(maps.shape[:3])]
        torch.testing.assert_close(rows, torch.ones_like(rows), rtol=0, atol=3e-3)


@pytest.mark.parametrize("method", ["a2d", "a2d-layerwise"])
def test_a2d_step_from_an_attention_cache_equals_the_live_teacher_without_running_it(method, tiny_data, teacher,
                                                                                    attention_cache):
    """With the maps cached, A2D's every loss term is the live teacher's (up to the maps' float16) and the teacher
    never runs, not even its body."""
    from a2d.attention import TEACHER_MAPS
    from a2d.methods import Progress, get_method
    from a2d.models import use_attention_maps
    from a2d.recipes.distill import distill_step, load_teacher

    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    cfg = distill_cfg(method, f"kd_cache={attention_cache}")
    t = load_teacher(teacher, vocab, tiny_data)
    student = build_model(cfg, len(vocab), seed=1)
    m = get_method(method)(cfg.settings, student.config, t.config)
    cache = TeacherCache(attention_cache)
    kinds = m.cached_map_kinds(cache.attention, "the cache")
    assert kinds == ("enc_self", "dec_self", "dec_cross")
    use_attention_maps(student)
    use_attention_maps(t)
    student.eval()
    indices = token_batches(data.src_lens, data.tgt_lens, 1024, shuffle=True, seed=5, epoch=2)[1]
    batch = batch_of(data, vocab, indices)
    progress = Progress(epoch=1, update=3, updates_per_epoch=10)
    entries = {**cache.lookup(indices, batch["labels"].shape[1]), **cache.lookup_maps(indices, batch, kinds)}
    live, cached, calls = live_and_cached_steps(student, t, m, cfg, batch, progress, entries)
    cached_batch = {**batch, **entries}
    assert calls == []
    for name in live:
        torch.testing.assert_close(cached[name], live[name], rtol=2e-3, atol=1e-5, msg=name)
    assert float(live["att"].detach()) > 0.1  # a student far from the teacher: the terms compared are not all ~0
    # without the teacher at all, too
    again, _ = distill_step(student, None, m, cached_batch, cfg, progress)
    torch.testing.assert_close(again["loss"], cached["loss"])
    with pytest.raises(ValueError, match="cached maps"):
        distill_step(student, None, m, {k: v for k, v in cached_batch.items() if k != TEACHER_MAPS["dec_self"]},
                     cfg, progress)


def test_distill_with_an_attention_cache_and_what_it_refuses(tiny_data, teacher, attention_cache, full_cache, tmp_path):
    from a2d.recipes.distill import distill

    logs = []
    result = distill(distill_cfg("a2d", f"kd_cache={attention_cache}"), tiny_data, tmp_path / "a2d", teacher,
                     log=logs.append)
    assert result.state.update == 2 and (tmp_path / "a2d" / "best" / "model.safetensors").is_file()
    line = next(line for line in logs if line.startswith("kd_cache"))
    assert "enc_self, dec_self, dec_cross maps" in line and "the teacher does not run" in line, line
    # word KD reads its top K and ignores the maps
    result = distill(distill_cfg("kd", f"kd_cache={attention_cache}"), tiny_data, tmp_path / "kd", teacher, log=quiet)
    assert result.state.update == 2
    with pytest.raises(UserError, match="kl_norm=reference reads the padding cells too") as e:
        distill(distill_cfg("a2d", f"kd_cache={attention_cache}", "kl_norm=reference"), tiny_data, tmp_path / "x",
                teacher, log=quiet)
    assert len(str(e.value).splitlines()) == 1 and not (tmp_path / "x").exists()
    # a build into a cache of the other content is refused, and leaves it as it was
    before = (full_cache / INDEX_FILE).read_bytes()
    with pytest.raises(BadValue, match="with or without the attention maps"):
        build_cache(teacher, tiny_data, full_cache, topk=len(Vocabulary.load(tiny_data)), shard_size=100,
                    attention=True, log=quiet)
    assert (full_cache / INDEX_FILE).read_bytes() == before


def test_an_attention_cache_that_does_not_fit_the_data_is_refused(tiny_data, teacher, attention_cache, tmp_path):
    """Offsets of the maps that disagree with the examples' lengths: one line, at check time."""
    data, vocab = ParallelData.load(tiny_data, "train"), Vocabulary.load(tiny_data)
    copy = tmp_path / "cache"
    shutil.copytree(attention_cache, copy)
    shard = copy / json.loads((copy / INDEX_FILE).read_text())["shards"][1]["file"]
    tensors = load_file(shard)
    offsets = tensors["att_dec_cross_offsets"].clone()
    offsets[5:8] = offsets[4]  # examples 4-6 of the shard own no cells; 7 takes theirs
    save_file({**tensors, "att_dec_cross_offsets": offsets}, shard)
    index = json.loads((copy / INDEX_FILE).read_text())
    index["shards"][1]["bytes"] = shard.stat().st_size
    (copy / INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(UserError, match="its dec_cross attention maps do not match the examples"):
        TeacherCache(copy).check(tiny_data, data, vocab, teacher)

"""The classifier and language-model families end to end through the command line: prepare-task, train, distill
(teacher and student of other layers, heads and width), resume, evaluate, plot-alignment; the folders load with
transformers alone and give the scores a2d reports."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

import a2d
from a2d.cli import main
from a2d.data.corpus import locate_corpus, read_lines
from a2d.data.tasks import multi30k_pairs
from a2d.recipes import task as task_recipe

TINY = ["d_model=32", "ffn_dim=64", "log_every=5", "warmup_updates=10", "max_tokens=1024"]
TINY_CLS = [*TINY, "encoder_attention_heads=2"]  # a setting of the stack the family has; the other is refused
TINY_LM = [*TINY, "decoder_attention_heads=2"]
STUDENT = ["d_model=16", "ffn_dim=32", "encoder_attention_heads=4", "decoder_attention_heads=4", "log_every=5",
           "warmup_updates=10", "max_tokens=1024"]


def run(*argv):
    assert main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def glue_mrpc(tmp_path_factory, data_root):
    """A GLUE MRPC-layout folder holding 300 / 100 Multi30k pairs (the stand-in's examples)."""
    folder = tmp_path_factory.mktemp("glue") / "MRPC"
    folder.mkdir()
    splits = multi30k_pairs(locate_corpus("multi30k", "de", "en"), seed=1, max_train=300)
    for name, split in (("train.tsv", "train"), ("dev.tsv", "valid")):
        rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        rows += [f"{ex.label}\t{i}\t{i}\t{ex.text_a}\t{ex.text_b}" for i, ex in enumerate(splits[split][:300])]
        (folder / name).write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def test_classifier_train_distill_resume_evaluate(tmp_path, glue_mrpc):
    data, teacher = tmp_path / "data", tmp_path / "teacher"
    run("prepare-task", "classification", "--glue", glue_mrpc, "--vocab-size", 400, "--max-len", 64, "--out", data)
    meta = json.loads((data / "meta.json").read_text())
    assert (meta["task"], meta["family"], meta["metric"], meta["source"]["glue"]) == ("classification", "bert", "f1", "mrpc")
    run("train", "--data", data, "--preset", "classifier-teacher", "--out", teacher, "max_epochs=1",
        "encoder_layers=3", *TINY_CLS)
    # A2D, teacher 3 layers x 2 heads, d32 -> student 2 layers x 4 heads, d16; in one go, and stopped then resumed
    straight, resumed = tmp_path / "a2d", tmp_path / "a2d-resumed"
    common = ["--data", data, "--teacher", teacher, "--method", "a2d", "--preset", "classifier-student",
              "encoder_layers=2", "lambda_att=0.5", *STUDENT]
    run("distill", *common, "--out", straight, "max_epochs=2")
    run("distill", *common, "--out", resumed, "max_epochs=1")
    run("distill", *common, "--out", resumed, "max_epochs=2", "--resume")
    a, b = load_file(straight / "last" / "model.safetensors"), load_file(resumed / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    method = json.loads((straight / "method.json").read_text())
    assert method["kinds"]["enc_self"]["n_student"] == 8 and method["kinds"]["enc_self"]["n_teacher"] == 6
    valid = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "valid"]
    assert len(valid) == 2 and {"valid_accuracy", "valid_f1", "valid_mcc"} <= set(valid[0])
    train = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["type"] == "train"]
    assert {"att", "att_enc_self", "kd", "ce"} <= set(train[0])
    # evaluate, and the same predictions from transformers alone on the dev TSV's text
    run("evaluate", "--model", straight, "--data", data, "--split", "valid", "--out", tmp_path / "valid.json")
    result = json.loads((tmp_path / "valid.json").read_text())
    tok = AutoTokenizer.from_pretrained(straight / "best")
    model = AutoModelForSequenceClassification.from_pretrained(straight / "best").eval()
    rows = [line.split("\t") for line in read_lines(glue_mrpc / "dev.tsv")[1:]]
    with torch.no_grad():
        predictions = [int(model(**tok(r[3], r[4], truncation=True, return_tensors="pt")).logits.argmax(-1))
                       for r in rows]
    assert predictions == result["rows"]["prediction"]
    correct = sum(p == int(r[0]) for p, r in zip(predictions, rows))
    assert result["accuracy"] == pytest.approx(100 * correct / len(rows))
    run("plot-alignment", "--run", straight, "--out", tmp_path / "aam.png")
    assert (tmp_path / "aam.png").stat().st_size > 1000


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, glue_mrpc):
    """A prepared MRPC-layout folder and a 1-layer classifier trained 2 updates on it."""
    root = tmp_path_factory.mktemp("tiny-classifier")
    data = root / "data"
    run("prepare-task", "classification", "--glue", glue_mrpc, "--vocab-size", 400, "--max-len", 64, "--out", data)
    run("train", "--data", data, "--preset", "classifier-teacher", "--out", root / "t", "max_steps=2",
        "encoder_layers=1", *TINY_CLS)
    return data, root / "t"


def test_a_family_run_killed_after_its_last_update_validates_on_resume(tmp_path, tiny_classifier, monkeypatch):
    """last/ written by save_every at the final update, killed in the validation: --resume validates that update,
    best/ follows, and a finished run resumed again does not validate again (the translation recipes' rule)."""
    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed()

    data, _ = tiny_classifier
    out = tmp_path / "t"
    argv = ["train", "--data", data, "--preset", "classifier-teacher", "--out", out, "max_steps=4", "save_every=2",
            "encoder_layers=1", *TINY_CLS]
    with monkeypatch.context() as m:
        m.setattr(task_recipe, "validate_task", killed)
        with pytest.raises(Killed):
            run(*argv)
    state = json.loads((out / "last" / "trainer" / "state.json").read_text())
    assert state["update"] == 4 and not state["finished"] and not (out / "best").exists()

    def validations():
        return [json.loads(x)["update"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"valid"' in x]

    run(*argv, "--resume")
    state = json.loads((out / "last" / "trainer" / "state.json").read_text())
    assert state["finished"] and state["best_epoch"] == 1 and validations() == [4]
    best, last = load_file(out / "best" / "model.safetensors"), load_file(out / "last" / "model.safetensors")
    assert best.keys() == last.keys() and all(torch.equal(best[k], last[k]) for k in best)
    run(*argv, "--resume")
    assert validations() == [4]


def test_classifier_refusals_are_one_line(tmp_path, tiny_classifier, capsys):
    data, teacher = tiny_classifier
    capsys.readouterr()
    for argv, message in [
        (["--method", "a2d", "att_kinds=dec-self"], "method a2d needs dec_self attention, which a bert model lacks"),
        (["--method", "ckd"], "method ckd distils marian models, not bert"),
        (["--method", "kd", "decoder_layers=2", "valid_beam=4"],
         "valid_beam=4, decoder_layers=2: not used by a bert (classification) run; drop them"),
    ]:
        assert main(["distill", "--data", str(data), "--teacher", str(teacher), "--preset",
                     "classifier-student", "--out", str(tmp_path / "s"), *argv, *STUDENT]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
        assert not (tmp_path / "s").exists()


def test_language_model_train_distill_generate(tmp_path, data_root):
    en = read_lines(locate_corpus("multi30k", "de", "en")["train"][1])
    (tmp_path / "train.txt").write_text("\n".join(en[:400]) + "\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n".join(en[400:500]) + "\n", encoding="utf-8")
    data, teacher, student = tmp_path / "data", tmp_path / "teacher", tmp_path / "a2d"
    run("prepare-task", "lm", "--train", tmp_path / "train.txt", "--valid", tmp_path / "valid.txt",
        "--vocab-size", 400, "--max-len", 48, "--out", data)
    run("train", "--data", data, "--preset", "lm-teacher", "--out", teacher, "max_epochs=2", "decoder_layers=3",
        *TINY_LM)
    run("distill", "--data", data, "--teacher", teacher, "--method", "a2d", "--preset", "lm-student", "--out",
        student, "max_epochs=1", "decoder_layers=1", *STUDENT)
    method = json.loads((student / "method.json").read_text())
    assert list(method["kinds"]) == ["dec_self"] and method["kinds"]["dec_self"]["n_teacher"] == 6
    run("evaluate", "--model", student, "--data", data, "--split", "valid", "--out", tmp_path / "valid.json")
    result = json.loads((tmp_path / "valid.json").read_text())
    # the perplexity from transformers' own loss, sentence by sentence
    tok = AutoTokenizer.from_pretrained(student / "best")
    model = AutoModelForCausalLM.from_pretrained(student / "best").eval()
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for line in en[400:500]:
            ids = torch.tensor([[tok.eos_token_id, *tok(line)["input_ids"][:46], tok.eos_token_id]])
            nll += float(model(input_ids=ids, labels=ids).loss) * (ids.shape[1] - 1)
            tokens += ids.shape[1] - 1
    assert result["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-4)
    out = model.generate(**tok(tok.bos_token + "A man", return_tensors="pt"), max_new_tokens=5, do_sample=False,
                         pad_token_id=tok.pad_token_id)
    assert out.shape[1] > len(tok(tok.bos_token + "A man")["input_ids"])


def test_a_bert_teacher_you_bring(tmp_path, glue_mrpc, capsys):
    """A fine-tuned BERT folder in the hub's layout (random weights, a WordPiece tokenizer): the data is prepared with
    its tokenizer, and the student takes its positions."""
    from transformers import BertConfig, BertForSequenceClassification

    from a2d.data.tasks import train_tokenizer

    rows = [line.split("\t") for line in read_lines(glue_mrpc / "train.tsv")[1:]]
    tok = train_tokenizer("bert", [t for r in rows for t in (r[3], r[4])], 300, 72)

    def bring(folder, labels):
        torch.manual_seed(0)
        config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=72, num_labels=labels,
                            attention_probs_dropout_prob=0.0)
        BertForSequenceClassification(config).save_pretrained(folder)
        tok.save_pretrained(folder)
        return folder

    teacher = bring(tmp_path / "bert-mrpc", 2)
    data = tmp_path / "data"
    run("prepare-task", "classification", "--glue", glue_mrpc, "--tokenizer", teacher, "--max-len", 64, "--out", data)
    run("distill", "--data", data, "--teacher", teacher, "--method", "a2d", "--preset", "glue-student",
        "--out", tmp_path / "s", "max_steps=3", "encoder_layers=1", *STUDENT)
    config = json.loads((tmp_path / "s" / "best" / "config.json").read_text())
    assert config["max_position_embeddings"] == 72 and config["model_type"] == "bert"
    three = bring(tmp_path / "bert-mnli", 3)
    capsys.readouterr()
    assert main(["distill", "--data", str(data), "--teacher", str(three), "--method", "kd", "--preset",
                 "glue-student", "--out", str(tmp_path / "s3"), *STUDENT]) == 2
    assert "3 classes, the data has 2 (0, 1)" in capsys.readouterr().err


def test_a_llama_teacher_you_bring(tmp_path, data_root):
    """A causal LM folder in the hub's layout (Llama, random weights, its own tokenizer): the student is a Llama too,
    with other layers, heads and width, and A2D maps its heads onto the teacher's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from a2d.data.tasks import train_tokenizer

    en = read_lines(locate_corpus("multi30k", "de", "en")["train"][1])[:300]
    tok = train_tokenizer("llama", en, 300, 64)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    teacher = tmp_path / "llama"
    LlamaForCausalLM(config).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    (tmp_path / "train.txt").write_text("\n".join(en[:200]) + "\n", encoding="utf-8")
    (tmp_path / "valid.txt").write_text("\n".join(en[200:]) + "\n", encoding="utf-8")
    data = tmp_path / "data"
    run("prepare-task", "lm", "--train", tmp_path / "train.txt", "--valid", tmp_path / "valid.txt", "--family",
        "llama", "--tokenizer", teacher, "--max-len", 48, "--out", data)
    run("distill", "--data", data, "--teacher", teacher, "--method", "a2d", "--preset", "lm-student", "--out",
        tmp_path / "s", "max_steps=2", "decoder_layers=1", "activation_function=silu", "max_positions=64", *STUDENT)
    config = json.loads((tmp_path / "s" / "best" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 1 and config["hidden_size"] == 16
    method = json.loads((tmp_path / "s" / "method.json").read_text())
    assert method["kinds"]["dec_self"]["n_student"] == 4 and method["kinds"]["dec_self"]["n_teacher"] == 8


def test_evaluate_refuses_translation_options_on_a_classifier(tiny_classifier, capsys):
    data, teacher = tiny_classifier
    capsys.readouterr()
    assert main(["evaluate", "--model", str(teacher), "--data", str(data), "--beam", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--beam: decoding options of translation models" in err


def test_two_processes_distill_a_classifier(tmp_path, tiny_classifier):
    """The family recipe data-parallel under torch.distributed.run (two CPU processes, gloo): it finishes, only the main
    process writes, and its validation (each process scoring its share, gathered) covers every dev example once."""
    data, teacher = tiny_classifier
    out = tmp_path / "ddp"
    src = str(Path(a2d.__file__).resolve().parents[1])  # the workers import the code under test
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541", "-m",
           "a2d.cli", "distill", "--data", str(data), "--teacher", str(teacher), "--method", "a2d", "--preset",
           "classifier-student", "--out", str(out), "max_steps=3", "encoder_layers=1", *STUDENT, "log_every=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["update"] for r in records if r["type"] == "train"] == [1, 2, 3]
    valid = [r for r in records if r["type"] == "valid"]
    assert len(valid) == 1 and 0 <= valid[0]["valid_accuracy"] <= 100
    run("evaluate", "--model", out, "--data", data, "--split", "valid", "--out", tmp_path / "v.json")
    result = json.loads((tmp_path / "v.json").read_text())
    assert result["accuracy"] == pytest.approx(valid[0]["valid_accuracy"])  # the gathered score is the whole split's

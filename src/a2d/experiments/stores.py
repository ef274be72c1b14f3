"""What a grid keeps beside its results, so that its results outlive the run folders.

* ``RESULTS/quality-<name>-hyps/<dir>/<cell>-s<seed>.hyp.gz``: every cell's test translations, checked
  against the results JSON's sha256 when read back, so cells trained later (on another machine, or after the
  run folders are gone) are still compared with the paired test; the references come from the prepared test
  data, never from the repository.
* ``RESULTS/quality-<name>-teachers/<dir>/`` (grids with ``store_teachers: true``): the teacher's model folder
  (``RUN/best``: weights, configs, vocabulary) and ``teacher.json``, a manifest naming the result it belongs
  to (by its translations' sha256) and each file's sha256. Students are distilled from it when the teacher's
  run is gone.
* ``RESULTS/quality-<name>-students/<dir>/<cell>-s<seed>/`` (the same grids): each cell's best student, its
  weights in fp16 (a few MiB), with its configs, vocabulary and ``student.json``, a manifest of the same
  scheme; a result can be re-scored, timed or exported from it without training again.
"""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

from a2d.experiments.files import read_json, read_written_lines, sha_lines, split_lines
from a2d.experiments.grid import Grid
from a2d.experiments.plan import Job, eval_dir
from a2d.provenance import now
from a2d.rundir import RunDir
from a2d.utils import UserError, atomic_dir, atomic_write_bytes, sha256_file

TEACHER_MANIFEST = "teacher.json"  # in a stored teacher's folder
STUDENT_MANIFEST = "student.json"  # in a stored student's folder
WEIGHTS = "model.safetensors"


def results_paths(grid: Grid, results: Path) -> tuple[Path, Path]:
    return results / f"quality-{grid.name}.json", results / f"quality-{grid.name}.md"


# =============================================================================================== hypotheses
def hyps_dir(grid: Grid, results: Path) -> Path:
    return results / f"quality-{grid.name}-hyps"


def gz_lines(lines: list[str]) -> bytes:
    """gzip of the lines, byte-for-byte reproducible (no file name, mtime 0)."""
    return gzip.compress("".join(x + "\n" for x in lines).encode("utf-8"), mtime=0)


def read_gz_lines(path: Path) -> list[str] | None:
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable gzip text file ({e}); remove it") from None
    return split_lines(text)


def save_hypotheses(grid: Grid, results: Path, records: dict[str, dict]) -> None:
    """Keep every cell's test translations beside the results JSON (the references are the corpus's: not stored)."""
    store = hyps_dir(grid, results)
    for rec in records.values():
        if "hypotheses" in rec:
            path = store / f"{rec['id']}.hyp.gz"
            current = read_gz_lines(path)
            if current is None or sha_lines(current) != rec.get("hyp_sha256"):
                atomic_write_bytes(path, gz_lines(rec["hypotheses"]))


def load_hypotheses(grid: Grid, runs: Path, results: Path, records: dict[str, dict], log) -> None:
    """Give records read from the results JSON their stored hypotheses, and the references of the
    prepared test data (``RUNS/data-<dir>``, present whenever a cell of that direction is run), where
    each matches the sha256 the cell was scored with."""
    store = hyps_dir(grid, results)
    refs: dict[str, tuple[list[str], str] | None] = {}  # direction -> (references, their sha256)
    for rec in records.values():
        d = rec["direction"]
        if d not in refs:
            ref_file = eval_dir(grid, runs, d) / f"test.{d.split('-')[-1]}"
            lines = read_written_lines(ref_file) if ref_file.is_file() else None
            refs[d] = (lines, sha_lines(lines)) if lines is not None else None
        if "references" not in rec and refs[d] is not None and refs[d][1] == rec.get("ref_sha256"):
            rec["references"] = refs[d][0]
        if "hypotheses" in rec:
            continue
        path = store / f"{rec['id']}.hyp.gz"
        lines = read_gz_lines(path)
        if lines is None:
            continue
        if sha_lines(lines) == rec.get("hyp_sha256"):
            rec["hypotheses"] = lines
        else:
            log(f"note: {path} does not hold the translations {rec['id']} was scored with (sha256 differs); ignored")


# =============================================================================================== models
def teacher_store(grid: Grid, results: Path, direction: str) -> Path:
    return results / f"quality-{grid.teacher_grid}-teachers" / direction


def student_store(grid: Grid, results: Path, job: Job) -> Path:
    return results / f"quality-{grid.name}-students" / job.direction / job.run.name


def _fp16(src: Path, dst: Path) -> None:
    """``src`` (safetensors) with every floating-point tensor in float16."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in load_file(src).items()}
    save_file(tensors, dst, metadata={"format": "pt"})


def round_to_fp16(weights: Path) -> bool:
    """Round the floating-point tensors of ``weights`` (safetensors), in place, to the values float16 holds, keeping
    their dtype: the model is then the one its float16 copy stores. True if a value changed; a value float16 cannot
    hold (beyond +-65504) is a UserError, and the file is left as it was."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    rounded = {k: v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    overflow = [k for k, v in rounded.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if overflow:
        raise UserError(f"{weights}: {overflow[0]} holds values float16 cannot hold; use teacher_dtype: float32")
    if all(torch.equal(tensors[k], rounded[k]) for k in tensors):
        return False
    tmp = weights.with_name(weights.name + ".tmp")
    save_file(rounded, tmp, metadata={"format": "pt"})
    tmp.replace(weights)
    return True


def _store_model(out: Path, manifest_name: str, job: Job, record: dict, what: str, log, fp16: bool = False) -> Path:
    """Copy ``RUN/best`` (weights, configs, vocabulary) of the scored ``job`` to ``out``, with a manifest naming
    the result it belongs to (by its translations' sha256) and each file's sha256; kept if already there."""
    manifest = read_json(out / manifest_name)
    if manifest and manifest.get("hyp_sha256") == record["hyp_sha256"]:
        return out
    files = sorted(p for p in RunDir(job.run).best.iterdir() if p.is_file())
    with atomic_dir(out) as tmp:
        for f in files:
            if fp16 and f.name == WEIGHTS:
                _fp16(f, tmp / f.name)
            else:
                shutil.copyfile(f, tmp / f.name)
        info = {"id": job.id, "bleu": record["bleu"], "hyp_sha256": record["hyp_sha256"], "commit": record["commit"],
                "stored": now(), "files": {f.name: sha256_file(tmp / f.name) for f in files}}
        if fp16:
            info["dtype"] = "float16"
        (tmp / manifest_name).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    log(f"   {job.id}: stored the {what} ({size:.1f} MiB) in {out}")
    return out


def _stored_model(out: Path, manifest_name: str, record: dict | None, what: str, results_json: Path) -> Path | None:
    """The stored copy of the model ``record`` describes, every file checked; None if none is stored."""
    manifest = read_json(out / manifest_name)
    if manifest is None:
        return None
    if record is None or manifest.get("hyp_sha256") != record.get("hyp_sha256"):
        raise UserError(f"{out}: holds another {what} than the {record['id'] if record else what} of {results_json} "
                        "(their test translations differ); remove one of them")
    check_stored_files(out, manifest, list(manifest.get("files", {})), what)
    return out


def check_stored_files(store: Path, manifest: dict, names: list[str], what: str) -> None:
    """Each named file of a stored model is there with the sha256 its manifest recorded."""
    files = manifest.get("files", {})
    for name in names:
        if name not in files or not (store / name).is_file() or sha256_file(store / name) != files[name]:
            raise UserError(f"{store / name}: missing or changed since the {what} was stored (sha256 differs)")


def store_teacher(grid: Grid, results: Path, job: Job, record: dict, log) -> Path:
    return _store_model(teacher_store(grid, results, job.direction), TEACHER_MANIFEST, job, record, "teacher", log,
                        fp16=grid.teacher_dtype == "float16")


def stored_teacher(grid: Grid, results: Path, direction: str, record: dict | None) -> Path | None:
    """The stored copy of the teacher the results describe (``record``), every file checked; None if none."""
    return _stored_model(teacher_store(grid, results, direction), TEACHER_MANIFEST, record, "teacher",
                         results_paths(grid, results)[0])


def stored_teacher_vocab(grid: Grid, results: Path | None, direction: str) -> Path | None:
    """The stored teacher's ``sentencepiece.model`` for ``direction``, checked against its manifest; None if none."""
    if results is None:
        return None
    store = teacher_store(grid, results, direction)
    manifest = read_json(store / TEACHER_MANIFEST)
    if not manifest:
        return None
    check_stored_files(store, manifest, ["sentencepiece.model"], "teacher")
    return store / "sentencepiece.model"


def store_student(grid: Grid, results: Path, job: Job, record: dict, log) -> Path:
    """Keep the scored student's best weights (fp16), configs and vocabulary beside the results."""
    return _store_model(student_store(grid, results, job), STUDENT_MANIFEST, job, record, "student", log, fp16=True)


def stored_student(grid: Grid, results: Path, job: Job, record: dict | None) -> Path | None:
    """The stored copy of the student the results describe (``record``), every file checked; None if none."""
    return _stored_model(student_store(grid, results, job), STUDENT_MANIFEST, record, "student",
                         results_paths(grid, results)[0])


__all__ = ["WEIGHTS", "round_to_fp16", "results_paths", "hyps_dir", "gz_lines", "read_gz_lines", "save_hypotheses", "load_hypotheses",
           "teacher_store", "student_store", "store_teacher", "stored_teacher", "stored_teacher_vocab",
           "store_student", "stored_student", "check_stored_files"]

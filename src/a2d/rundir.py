"""Run folders: the one module that knows their layout, their status, resuming and checkpoints.

A run folder written by ``a2d train`` or ``a2d distill``::

    RUN/config.yaml            the resolved configuration (written once every setting has been checked)
    RUN/metrics.jsonl          one JSON object per line: ``train`` every log_every updates, ``valid`` per epoch
    RUN/best/                  the best model on validation: a Hugging Face folder (safetensors + vocabulary)
    RUN/last/                  the latest model, and in last/trainer/ what --resume needs:
        trainer/state.json     where the run is (:class:`TrainState`)
        trainer/optimizer.pt   optimizer and scheduler state (loaded with weights_only=True)
        trainer/scheduler.pt
        trainer/rng.pt         every process's RNG state (data-parallel runs restore each rank's own)
        trainer/*.safetensors  the method's own modules (the AAM), if any
    RUN/method.safetensors     the method's modules of the best student (a2d plot-alignment)

Checkpoints are written into a temporary sibling folder and swapped in (:func:`a2d.utils.atomic_dir`); a run
killed at any point leaves either the old or the new checkpoint. :meth:`RunDir.begin` tidies what a kill
can leave (temporary folders, a half-done swap, a half-written metrics line) before a run goes on.
Nothing else in the package reads or writes ``last/trainer``.
"""
from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from a2d.config import SHAPE_KEYS, read_yaml, save_config
from a2d.data.vocab import Vocabulary
from a2d.utils import UserError, atomic_dir, atomic_write_bytes, atomic_write_text, check_writable_dir

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TRAINER_DIR = "trainer"
STATE_FILE = "state.json"
#: Files a run writes at its top level before its first checkpoint: a run killed then may start over.
_EARLY_FILES = {CONFIG_FILE, METRICS_FILE}


@dataclass
class TrainState:
    """Where a run is; saved with ``last/`` so that ``--resume`` continues exactly."""

    epoch: int = 1  # the epoch in progress (1-based)
    update: int = 0  # updates done
    batch_in_epoch: int = 0  # batches of this epoch already consumed (this process's shard)
    best_bleu: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since the best validation BLEU
    finished: bool = False


def rng_state() -> dict:
    """This process's RNG state (torch, Python's random, CUDA when there is one)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _safe_load(path: Path):
    """``torch.load(weights_only=True)`` with a one-line error that never advises unpickling the file."""
    if not path.is_file():
        raise UserError(f"{path}: missing; this checkpoint is incomplete")
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "Unsupported" in line), "")
        raise UserError(f"{path}: not a checkpoint a2d wrote; refused to load it "
                        f"(it holds more than tensors{': ' + detail if detail else ''})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UserError(f"{path}: damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None


def _read_state(path: Path) -> TrainState:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in fields(TrainState)}
        if not isinstance(data, dict) or not set(data) <= names:
            raise ValueError("unexpected content")
        return TrainState(**data)
    except (OSError, UnicodeDecodeError, ValueError, TypeError) as e:
        raise UserError(f"{path}: damaged ({e}); this checkpoint cannot be resumed (start a new run with "
                        "another --out)") from None


class RunDir:
    """A run folder: ``RunDir(path).status()``, ``.state()``, and what the recipes do with it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.config_file = self.path / CONFIG_FILE
        self.metrics_file = self.path / METRICS_FILE
        self.last = self.path / "last"
        self.best = self.path / "best"
        self.trainer_dir = self.last / TRAINER_DIR
        self.state_file = self.trainer_dir / STATE_FILE

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------ status
    def state(self) -> TrainState | None:
        """The saved :class:`TrainState` of ``last/`` (or of a half-swapped one), or None before the first save."""
        path = self.state_file
        if not path.is_file():
            old = self._swap_leftover("last")
            if old is None:
                return None
            path = old / TRAINER_DIR / STATE_FILE
        return _read_state(path)

    def status(self) -> str:
        """``finished``, ``started`` (resumable), ``broken`` (files but no checkpoint) or ``new``."""
        state = self.state()
        if state is not None:
            return "finished" if state.finished else "started"
        if self.path.is_dir() and any(p.name != "wall.json" for p in self.path.iterdir()):
            return "broken"
        return "new"

    def reopen(self) -> None:
        """Mark a finished run unfinished, so that ``--resume`` with a larger budget goes on from it."""
        state = self.state()
        if state is None:
            raise UserError(f"{self.path}: no checkpoint to reopen")
        state.finished = False
        atomic_write_text(self.state_file, json.dumps(asdict(state), indent=2))

    # ------------------------------------------------------------------------------------------ starting
    def begin(self, resume: bool, log=print) -> bool:
        """Make the folder ready (main process only); return whether a checkpoint will be resumed.

        A new run needs an absent or empty folder. ``resume`` tidies a killed run's leftovers first; a run
        killed before its first checkpoint (nothing, or ``config.yaml`` and maybe ``metrics.jsonl``) starts
        over, with a note.
        """
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"--out {self.path}: exists and is not a folder")
        if not resume:
            if self.path.exists() and any(self.path.iterdir()):
                raise UserError(f"--out {self.path}: folder exists and is not empty (use --resume to continue "
                                "it, or choose another folder)")
            self._mkdir()
            return False
        if self.path.is_dir():
            self.tidy(log)
        if not self.path.is_dir() or not any(self.path.iterdir()):
            log(f"note: {self.path} holds no run yet (stopped before it began, or a new folder); starting it "
                "from the beginning")
            self._mkdir()
            return False
        if self.state_file.is_file():
            return True
        leftovers = {p.name for p in self.path.iterdir()}
        if leftovers <= _EARLY_FILES:
            log(f"note: {self.path} was stopped before its first checkpoint; starting it from the beginning")
            for name in leftovers:
                (self.path / name).unlink()
            return False
        raise UserError(f"--resume: {self.path} has no last/ checkpoint to resume from "
                        f"(found {', '.join(sorted(leftovers))}); choose another --out")

    def _mkdir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"--out {self.path}: cannot create ({e.strerror})") from None
        check_writable_dir(self.path)

    def _swap_leftover(self, name: str) -> Path | None:
        """``.NAME.old`` left by a kill between the two renames of a checkpoint swap (``NAME`` then missing)."""
        old = self.path / f".{name}.old"
        return old if old.is_dir() and not (self.path / name).exists() else None

    def tidy(self, log=print) -> None:
        """Remove the temporary folders and files of interrupted writes; finish a half-done checkpoint swap."""
        for name in ("last", "best"):
            old = self._swap_leftover(name)
            if old is not None:  # the older checkpoint is complete; the newer one may not be
                os.replace(old, self.path / name)
                log(f"note: recovered {self.path / name} from an interrupted save")
            elif (self.path / f".{name}.old").exists():
                shutil.rmtree(self.path / f".{name}.old", ignore_errors=True)
        for debris in self.path.glob(".*.tmp"):
            if debris.is_dir():
                shutil.rmtree(debris, ignore_errors=True)
            else:
                debris.unlink(missing_ok=True)
        for debris in self.path.glob("*.tmp"):  # method.safetensors.tmp of older versions
            if debris.is_file():
                debris.unlink(missing_ok=True)

    def check_resumable(self, cfg, vocab) -> None:
        """Refuse a resume whose settings or data no longer fit the checkpoint, naming what differs."""
        saved = read_yaml(self.config_file) if self.config_file.is_file() else read_yaml(self.last / CONFIG_FILE)
        wanted = cfg.to_dict()
        changed = [f"{k}={wanted[k]!r} (the run has {saved[k]!r})" for k in SHAPE_KEYS
                   if k in saved and k in wanted and saved[k] != wanted[k]]  # a method's keys: when both have them
        if changed:
            raise UserError(f"--resume {self.path}: {', '.join(changed)} differs from {self.config_file}; the "
                            "checkpoint cannot take it (drop the override, or start a new run with another --out)")
        if Vocabulary.load(self.last).checksum() != vocab.checksum():
            raise UserError(f"--resume {self.path}: --data has another vocabulary than the run was trained with "
                            f"({self.last}); give the run's own data directory")

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self, which: str, model, vocab, cfg, trainer: dict | None = None) -> Path:
        """Write ``best/`` or ``last/`` atomically: model (safetensors), vocabulary, ``config.yaml``.

        ``trainer`` (``optimizer``, ``scheduler``, ``rng`` (one state per process), ``state``, ``tensors``)
        goes to ``trainer/`` for ``--resume``.
        """
        path = self.path / which
        with atomic_dir(path) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            vocab.save(tmp, model_folder=True)  # + MarianTokenizer files: AutoTokenizer loads the folder
            save_config(cfg, tmp / CONFIG_FILE)
            if trainer is not None:
                folder = tmp / TRAINER_DIR
                folder.mkdir()
                torch.save(trainer["optimizer"], folder / "optimizer.pt")
                torch.save(trainer["scheduler"], folder / "scheduler.pt")
                torch.save({"ranks": list(trainer["rng"])}, folder / "rng.pt")
                for name, tensors in trainer.get("tensors", {}).items():
                    save_file(tensors, folder / f"{name}.safetensors")
                (folder / STATE_FILE).write_text(json.dumps(asdict(trainer["state"]), indent=2))
        return path

    def save_method(self, tensors: dict, info: dict) -> None:
        """The method's modules of the best student (the AAM), beside ``best/``."""
        from safetensors.torch import save as save_bytes

        atomic_write_bytes(self.path / "method.safetensors", save_bytes(tensors))
        atomic_write_text(self.path / "method.json", json.dumps(info, indent=2))

    def load_trainer(self, rank: int = 0, world: int = 1, log=print) -> dict:
        """Read ``last/trainer`` (``weights_only=True``: tensors and plain containers, never arbitrary pickle).

        ``rng`` in the result is this process's own state (rank 0's, with a note, when the saved run had
        another number of processes).
        """
        folder = self.trainer_dir
        if not self.state_file.is_file():
            raise UserError(f"{self.last}: no resumable checkpoint here (missing {TRAINER_DIR}/{STATE_FILE})")
        rng = _safe_load(folder / "rng.pt")
        ranks = rng["ranks"] if isinstance(rng, dict) and "ranks" in rng else [rng]
        if not isinstance(ranks, list) or not ranks or not all(isinstance(r, dict) and "torch" in r for r in ranks):
            raise UserError(f"{folder / 'rng.pt'}: damaged (no RNG state in it)")
        if len(ranks) != world and rank == 0:
            log(f"note: {self.path} was saved by {len(ranks)} process(es) and resumes with {world}; "
                "processes past the first take its RNG state")
        tensors = {}
        for p in sorted(folder.glob("*.safetensors")):
            try:
                tensors[p.stem] = load_file(p)
            except (SafetensorError, OSError) as e:
                raise UserError(f"{p}: damaged ({e})") from None
        return {
            "optimizer": _safe_load(folder / "optimizer.pt"),
            "scheduler": _safe_load(folder / "scheduler.pt"),
            "rng": ranks[rank] if rank < len(ranks) else ranks[0],
            "state": _read_state(self.state_file),
            "tensors": tensors,
        }

    # ------------------------------------------------------------------------------------------ metrics
    def metrics_log(self, enabled: bool, resume_state: TrainState | None = None) -> "MetricsLog":
        return MetricsLog(self.metrics_file, enabled, resume_state)


class MetricsLog:
    """``RUN/metrics.jsonl``: one JSON object per line, ``type`` = ``train`` or ``valid``. Main process only.

    On resume, lines that the checkpoint does not account for are dropped, as they will be written again:
    train lines after its update, validation lines of the epoch in progress (a run killed after an epoch's
    validation but before its end-of-epoch save validates again), and a half-written last line.
    """

    def __init__(self, path: Path, enabled: bool, resume_state: TrainState | None = None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        if resume_state is None:
            path.unlink(missing_ok=True)
            return
        if not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if not isinstance(record, dict):
                continue
            if record.get("type") == "valid":
                keep = record.get("epoch", 0) < resume_state.epoch
            else:
                keep = record.get("update", 0) <= resume_state.update
            if keep:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


__all__ = ["RunDir", "TrainState", "MetricsLog", "rng_state", "set_rng_state", "CONFIG_FILE", "METRICS_FILE"]

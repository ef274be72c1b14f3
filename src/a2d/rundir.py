"""Run folders: the one module that knows their layout, their status, resuming and checkpoints.

A run folder written by ``a2d train`` or ``a2d distill``::

    RUN/config.yaml            the resolved configuration (written once every setting has been checked)
    RUN/metrics.jsonl          one JSON object per line: ``train`` every log_every updates, ``valid`` per epoch
    RUN/best/                  the best model on validation: a Hugging Face folder (safetensors + vocabulary,
                               README.md: how transformers alone uses it)
    RUN/last/                  the latest model, and in last/trainer/ what --resume needs:
        trainer/state.json     where the run is (:class:`TrainState`)
        trainer/optimizer.pt   optimizer and scheduler state (loaded with weights_only=True)
        trainer/scheduler.pt
        trainer/rng.pt         every process's RNG state (data-parallel runs restore each rank's own)
        trainer/*.safetensors  the method's own modules (the AAM), if any
    RUN/method.safetensors     the method's modules of the best student (a2d plot-alignment)
    RUN/method.json            what they are (the method's describe())

Other modules ask this one where a run's files are (:meth:`RunDir.saved_config`, :func:`model_dir`,
:func:`method_files`, :func:`metrics_file`, :data:`BEST`/:data:`LAST`, ...) and never spell these names.

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

from a2d.config import SHAPE_KEYS, read_yaml, save_config
from a2d.data.vocab import Vocabulary
from a2d.errors import CannotCreate, NothingToResume, OutputExists, ResumeMismatch
from a2d.readme import hf_readme, write_readme
from a2d.utils import UserError, atomic_dir, atomic_write_bytes, atomic_write_text, check_writable_dir

# torch and safetensors are imported where a checkpoint is read or written: the command line asks this module
# where a run's files are before it knows whether it will train.

BEST, LAST = "best", "last"  # the best model on validation, and the latest (with what resuming needs)
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
TRAINER_DIR = "trainer"
STATE_FILE = "state.json"
#: The method's modules (the AAM): their name among a checkpoint's ``trainer`` tensors, and their files.
METHOD_TENSORS = "method"
METHOD_WEIGHTS = f"{METHOD_TENSORS}.safetensors"
METHOD_INFO = "method.json"
_MODEL_CONFIG = "config.json"  # a Hugging Face model folder's
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
    import torch

    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _safe_load(path: Path):
    """``torch.load(weights_only=True)`` with a one-line error that never advises unpickling the file."""
    import torch

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
        raise UserError(f"{path}: damaged ({e}); this checkpoint cannot be resumed (start a new run in "
                        "another folder)") from None


class RunDir:
    """A run folder: ``RunDir(path).status()``, ``.state()``, and what the recipes do with it."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.config_file = self.path / CONFIG_FILE
        self.metrics_file = self.path / METRICS_FILE
        self.last = self.path / LAST
        self.best = self.path / BEST
        self.trainer_dir = self.last / TRAINER_DIR
        self.state_file = self.trainer_dir / STATE_FILE

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------ files
    def saved_config(self) -> Path | None:
        """The run's ``config.yaml`` (or its ``last/``'s, when the top-level one is lost); None before the run wrote
        one."""
        return next((f for f in (self.config_file, self.last / CONFIG_FILE) if f.is_file()), None)

    def has_model(self, which: str) -> bool:
        """Whether ``best/`` (``which`` = :data:`BEST`) or ``last/`` (:data:`LAST`) holds a saved model."""
        return (self.path / which / _MODEL_CONFIG).is_file()

    def began(self) -> bool:
        """Whether the folder holds the files a run writes from its start (``config.yaml``, ``metrics.jsonl``)."""
        return any((self.path / name).exists() for name in _EARLY_FILES)

    # ------------------------------------------------------------------------------------------ status
    def state(self) -> TrainState | None:
        """The saved :class:`TrainState` of ``last/`` (or of a half-swapped one), or None before the first save."""
        path = self.state_file
        if not path.is_file():
            old = self._swap_leftover(LAST)
            if old is None:
                return None
            path = old / TRAINER_DIR / STATE_FILE
        return _read_state(path)

    def status(self, others: tuple[str, ...] = ()) -> str:
        """``finished``, ``started`` (resumable), ``broken`` (files but no checkpoint) or ``new``; ``others`` are
        the names of files that whoever runs the run keeps in its folder (they make no run ``broken``)."""
        state = self.state()
        if state is not None:
            return "finished" if state.finished else "started"
        if self.path.is_dir() and any(p.name not in others for p in self.path.iterdir()):
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
            raise OutputExists(self.path, "exists and is not a folder")
        if not resume:
            if self.path.exists() and any(self.path.iterdir()):
                raise OutputExists(self.path, "folder exists and is not empty", resume=True)
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
        raise NothingToResume(self.path, leftovers)

    def _mkdir(self) -> None:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CannotCreate(self.path, e.strerror) from None
        check_writable_dir(self.path)

    def _swap_leftover(self, name: str) -> Path | None:
        """``.NAME.old`` left by a kill between the two renames of a checkpoint swap (``NAME`` then missing)."""
        old = self.path / f".{name}.old"
        return old if old.is_dir() and not (self.path / name).exists() else None

    def tidy(self, log=print) -> None:
        """Remove the temporary folders and files of interrupted writes; finish a half-done checkpoint swap."""
        for name in (LAST, BEST):
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
        """Refuse a resume whose settings or data no longer fit the checkpoint, naming what differs
        (:class:`~a2d.errors.ResumeMismatch`)."""
        config_file = self.saved_config() or self.last / CONFIG_FILE
        saved = read_yaml(config_file)
        wanted = cfg.to_dict()
        changed = [(k, wanted[k], saved[k]) for k in SHAPE_KEYS
                   if k in saved and k in wanted and saved[k] != wanted[k]]  # a method's keys: when both have them
        if changed:
            raise ResumeMismatch(self.path, config_file, changed=changed)
        if type(vocab).load(self.last).checksum() != vocab.checksum():  # a Vocabulary, or a family's tokenizer
            raise ResumeMismatch(self.path, config_file, vocabulary=self.last)

    # ------------------------------------------------------------------------------------------ checkpoints
    def save(self, which: str, model, vocab, cfg, trainer: dict | None = None, readme: str | None = None) -> Path:
        """Write ``best/`` or ``last/`` atomically: model (safetensors), vocabulary, ``config.yaml``, README.md
        (``readme``, else the translation model's: how transformers alone uses it).

        ``trainer`` (``optimizer``, ``scheduler``, ``rng`` (one state per process), ``state``, ``tensors``)
        goes to ``trainer/`` for resuming.
        """
        import torch
        from safetensors.torch import save_file

        path = self.path / which
        with atomic_dir(path) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            positions = int(model.config.max_position_embeddings)
            # + MarianTokenizer files: AutoTokenizer loads the folder, and truncates to the model's positions
            vocab.save(tmp, model_folder=True, max_length=positions)
            write_readme(tmp, readme if readme is not None else hf_readme(path, model.generation_config.num_beams,
                                                                           positions))
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
        """The method's modules of the best student (the AAM), beside ``best/`` (:func:`method_files`)."""
        from safetensors.torch import save as save_bytes

        atomic_write_bytes(self.path / METHOD_WEIGHTS, save_bytes(tensors))
        atomic_write_text(self.path / METHOD_INFO, json.dumps(info, indent=2))

    def load_trainer(self, rank: int = 0, world: int = 1, log=print) -> dict:
        """Read ``last/trainer`` (``weights_only=True``: tensors and plain containers, never arbitrary pickle).

        ``rng`` in the result is this process's own state (rank 0's, with a note, when the saved run had
        another number of processes).
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

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


def model_dir(path: Path | str) -> Path:
    """The model folder ``path`` names: a run folder gives its ``best/``, or its ``last/`` before a first best; any
    other folder (``RUN/best``, ``RUN/last``, a Hugging Face folder) is itself."""
    path, run = Path(path), RunDir(path)
    if run.has_model(BEST):
        return run.best
    if not (path / _MODEL_CONFIG).exists() and run.has_model(LAST):
        return run.last
    return path


def model_config(folder: Path | str) -> Path:
    """The run configuration (``config.yaml``) saved in a checkpoint folder: ``best/``, ``last/``, or a copy of one."""
    return Path(folder) / CONFIG_FILE


def is_last(path: Path | str) -> bool:
    """Whether ``path`` names a run's ``last/`` checkpoint (by its name: the folder may be gone)."""
    return Path(path).name == LAST


def method_files(path: Path | str) -> tuple[Path, Path]:
    """``(method.json, method.safetensors)``: the method's modules (the AAM) of ``RUN``'s best student, or for
    ``RUN/last`` those saved with the last checkpoint (in ``last/trainer/``; described by the run's ``method.json``)."""
    path = Path(path)
    if is_last(path) and not (path / METHOD_INFO).is_file():
        return path.parent / METHOD_INFO, path / TRAINER_DIR / METHOD_WEIGHTS
    return path / METHOD_INFO, path / METHOD_WEIGHTS


def run_label(path: Path | str) -> str:
    """A short name for a run folder or one of its checkpoints: ``RUN`` or ``RUN/last``."""
    path = Path(path)
    return f"{path.parent.name}/{path.name}" if is_last(path) else path.name


def metrics_file(path: Path | str) -> Path:
    """The metrics log of the run folder ``path``; a file is itself."""
    path = Path(path)
    return path if path.is_file() else RunDir(path).metrics_file


class MetricsLog:
    """``RUN/metrics.jsonl``: one JSON object per line, ``type`` = ``train`` or ``valid``. Main process only.

    On resume, lines that the checkpoint does not account for are dropped, as they will be written again:
    train lines after its update, validation lines of the epoch in progress (a run killed after an epoch's
    validation but before its end-of-epoch save validates again), and a half-written last line. A finished
    checkpoint accounts for its own update's validation (the one at ``max_steps``, mid-epoch).
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
                keep = record.get("epoch", 0) < resume_state.epoch or (
                    resume_state.finished and record.get("update", 0) <= resume_state.update)
            else:
                keep = record.get("update", 0) <= resume_state.update
            if keep:
                kept.append(line)
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def resolve_model_dir(path: Path | str, model_types: tuple[str, ...] = ("marian",)) -> Path:
    """The model folder that ``path`` names (``RUN`` gives ``RUN/best``, else ``RUN/last``); a one-line error for a
    folder that is not a model or holds another model than ``model_types`` (``config.json``'s ``model_type``:
    Marian for the translation commands)."""
    path = model_dir(path)
    if (path / "a2d_export.json").is_file():
        if not (path / "model.bin").is_file():
            raise UserError(f"{path}: an incomplete CTranslate2 export (a2d_export.json but no model.bin); export the "
                            "model again with a2d export")
        raise UserError(f"{path}: a CTranslate2 export; this command needs the Hugging Face model folder it was made from")
    if not (path / "config.json").exists():
        if RunDir(path).began():
            raise UserError(f"{path}: a run with no saved model yet (no best/ or last/: it is before its first "
                            "checkpoint, or was stopped there); wait for its first checkpoint, or resume the run")
        raise UserError(f"{path}: not a model folder (no config.json; give a run folder, its best/ or last/, "
                        "or a Hugging Face Marian folder); run a2d train or a2d distill to make one")
    try:
        family = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError) as e:
        raise UserError(f"{path / 'config.json'}: not a model config ({e})") from None
    if family not in model_types and model_types != ("marian",):
        raise UserError(f"{path}: a {family or 'unknown'} model; this task takes {' or '.join(model_types)} models")
    if family not in model_types:
        raise UserError(f"{path}: a {family or 'unknown'} model; a2d supports Marian models only (MarianMTModel "
                        "folders: a2d's own, or OPUS-MT's saved with save_pretrained)")
    return path



__all__ = ["resolve_model_dir", "RunDir", "TrainState", "MetricsLog", "rng_state", "set_rng_state", "model_dir", "is_last", "method_files",
           "run_label", "metrics_file", "model_config", "BEST", "LAST", "CONFIG_FILE", "METRICS_FILE", "METHOD_TENSORS",
           "METHOD_WEIGHTS", "METHOD_INFO"]

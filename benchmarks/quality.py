"""Quality benchmark (issue 5): the paper's Table 1 and its ablations, trained and scored from a grid file.

    python benchmarks/quality.py benchmarks/grids/tiny.yaml [--only SUBSTRING ...] [--runs-dir runs/quality]
                                 [--results-dir benchmarks/results] [--dry-run] [--report-only]

For every direction of the grid: prepare the data once (``RUNS/data-<src>-<tgt>``, the corpus comes from
``$A2D_DATA_DIR`` or the download cache as everywhere else), train one teacher
(``RUNS/<name>/<src>-<tgt>/teacher``), then every cell x seed (``RUNS/<name>/<src>-<tgt>/<cell>-s<seed>``);
score each on the test split (test_2016 for Multi30k; beam 5) with sacreBLEU and its 95% bootstrap CI,
writing ``test.json``/``test.hyp`` beside the run, and its result to ``cell.json`` in the run folder.
Sequence-level KD cells train on the teacher's beam translations, written once per direction by
``distill_data`` into ``RUNS/<name>/<src>-<tgt>/seqkd-data-b<beam>``.

A cell whose result is in its ``cell.json``, or in the results JSON while its run folder is absent, is
skipped; a run that was started and not finished is resumed (``resume=True``); a finished run without
``cell.json`` is only scored; so the grid can be run in pieces (``--only``), interrupted, and continued on
other machines or in later sessions. To redo a cell, remove its run folder and pass ``--redo``.
Training wall time is measured per piece (updated at every epoch end, so an interrupted piece still
counts up to its last checkpoint) and summed; every piece records its hardware and commit.

Outputs (rewritten atomically after every finished cell):

* ``RESULTS/quality-<name>.json``: every cell's result (hypotheses left out), the paired bootstrap
  comparisons and the alignment figures. Results found in ``RUNS/<name>/*/*/cell.json`` are merged with
  those already in this file, so pieces run elsewhere are merged by copying their ``cell.json`` files
  (each holds its hypotheses and the references, all the paired test needs) into the same layout.
* ``RESULTS/quality-<name>-hyps/<dir>/<cell>-s<seed>.hyp.gz``: every cell's test translations, checked
  against the JSON's sha256 when read back, so cells trained later (on another machine, or after the run
  folders are gone) are still compared with the paired test; the references come from the prepared
  test data, never from the repository.
* ``RESULTS/quality-<name>-teachers/<dir>/`` (grids with ``store_teachers: true``): the teacher's weights
  and vocabulary (its ``best/`` folder) with a manifest of sha256 sums, written once the teacher is scored.
  When the teacher's run folder is gone, students are distilled from this copy, so a grid can go on in
  another session with the teacher its earlier students had. A teacher whose students exist is never
  trained again: without its run or a stored copy such a grid stops with an error (name a new grid).
* ``RESULTS/quality-<name>.md``: Table 1 (rows: teacher, then the grid's ``methods`` in order; per
  direction ``BLEU ± half-width of the 95% CI`` and the paired bootstrap p-values against the No-KD and
  the vanilla-KD student of the same seed), the validation BLEU of every student (defaults are chosen
  there, never on test), the ablation tables (Table 3 heads with the final L_att, Table 4 head-wise vs
  layer-wise, Table 5 attention kinds; each only when one of its cells exists), the alignment figure of
  the A2D student that is best on validation (``RESULTS/quality-<name>-alignment-<dir>.png``), and a
  per-cell table with valid BLEU, final L_att, training time, hardware, commit and finish time.

``--dry-run`` prints the planned cells and which are done; ``--report-only`` rebuilds the JSON and the
markdown from the results found, training nothing.

Grid file (YAML; every key but ``name``, ``teacher``, ``student_preset`` and ``methods`` is optional)::

    name: tiny                       # -> RESULTS/quality-tiny.{json,md}, runs under RUNS/tiny/
    corpus: multi30k                 # a corpus `a2d prepare --corpus` knows
    directions: [de-en, en-de]       # src-tgt
    vocab_size: 8000                 # joint SentencePiece vocabulary of each direction's data
    max_train: null                  # keep the first N training pairs (null: all)
    test_max_sentences: null         # score only the first N test sentences (smoke tests; null: all)
    beam: 5                          # beam of the test translations
    seq_kd_beam: 5                   # beam of the teacher's translations for seq-kd cells
    bootstrap_samples: 1000          # resamples of the paired bootstrap test
    store_teachers: false            # keep each teacher's weights in RESULTS/quality-<name>-teachers/
    continue_from: null              # another grid's name: use its data and its teacher (run folder or stored
                                     # copy; the teacher settings must match), and start each student from that
                                     # grid's finished run of the same cell and seed when only max_epochs differs
                                     # (smaller there): the same student as trained from the start, sooner
    seeds: [1]                       # every student cell runs once per seed (override seed=S)
    teacher: {preset: tiny-teacher, overrides: [max_epochs=20]}   # one teacher per direction
    student_preset: tiny-student     # preset of every student cell (a cell may set its own `preset`)
    student_overrides: [max_epochs=15]                            # before each cell's own overrides
    baselines: {nokd: nokd, kd: kd}  # the cells the paired tests compare against (these are the defaults;
                                     # without them: the first cell of method none / kd)
    methods:                         # Table 1 rows after the teacher, in this order
      nokd: {method: none}           # cell name -> method (`a2d methods`), optional overrides, preset, label
      kd: {method: kd}
      seq-kd: {method: seq-kd}       # the script writes the teacher's distilled data itself
      a2d: {method: a2d, label: "A2D (per-query KL, convex AAM)"}
      a2d-reference: {method: a2d, overrides: [kl_norm=reference, aam=linear], compare_to: a2d}
                                     # compare_to: also paired-test this cell against that one ("Variants" table)
      a2d-t2: {method: a2d, overrides: [kd_temperature=2], compare_to: a2d, seeds: [1]}
                                     # seeds: run for some of the grid's seeds only (default: all of them)
    ablations:                       # extra cells; each varies the `base` A2D cell (its method, preset, overrides)
      base: a2d                      # default a2d
      heads: [2, 4, 8, 16]           # Table 3: cells <base>-heads-N and <nokd>-heads-N with N encoder and
                                     #   decoder heads (N = the student's own heads reuses <base> and <nokd>)
      granularity: true              # Table 4: <base> (head-wise) vs <base>-layerwise (att_granularity=layer)
      att_kinds: [all, enc-self, dec-all, dec-self, dec-cross]   # Table 5: <base>-att-<kind>; all = <base>
                                     # (the Table 4 and 5 cells are also paired-tested against <base>)
      seeds: [1]                     # the generated cells run for these of the grid's seeds only (default all);
                                     #   each ablation table compares its rows over the seeds they share

A generated ablation cell whose name the grid's ``methods`` already defines is that cell (so
``methods: {a2d-layerwise: ...}`` is Table 4's layer-wise row). No-KD cells are trained with the plain
``train`` recipe, every other method with ``distill``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from a2d import provenance
from a2d.config import ConfigError, load_config, read_yaml
from a2d.data.corpus import corpus_spec, locate_corpus
from a2d.data.prepare import prepare, summary_lines
from a2d.evaluate import evaluate_model, paired_bootstrap
from a2d.methods import get_method
from a2d.recipes.distill import distill
from a2d.recipes.distill_data import distill_data
from a2d.recipes.train import train
from a2d.utils import UserError, atomic_dir, atomic_write_bytes, atomic_write_text, sha256_file

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RESULTS = REPO / "benchmarks" / "results"
DEFAULT_RUNS = Path("runs") / "quality"
CELL_FILE = "cell.json"
MANIFEST = "teacher.json"  # in a stored teacher's folder
WALL_FILE = "wall.json"
TEACHER = "teacher"

LABELS = {"none": "No KD", "kd": "Vanilla KD", "seq-kd": "Sequence KD", "selective-kd": "Selective KD",
          "tinybert": "TinyBERT", "minilm": "MiniLM", "alp-kd": "ALP-KD", "pkd": "PKD", "ckd": "CKD",
          "a2d": "A2D", "a2d-layerwise": "A2D (layer-wise)"}
A2D_METHODS = ("a2d", "a2d-layerwise")
ATT_KINDS = ("all", "enc-self", "dec-all", "dec-self", "dec-cross")
GRID_KEYS = {"name", "corpus", "directions", "vocab_size", "max_train", "test_max_sentences", "beam", "seq_kd_beam",
             "bootstrap_samples", "seeds", "teacher", "student_preset", "student_overrides", "baselines", "methods",
             "ablations", "store_teachers", "continue_from"}
CELL_KEYS = {"method", "overrides", "preset", "label", "compare_to", "seeds"}
ABLATION_KEYS = {"base", "heads", "granularity", "att_kinds", "seeds"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


# =============================================================================================== the grid
@dataclass
class Cell:
    name: str
    method: str
    preset: str
    overrides: list[str]  # student_overrides + the cell's own; the seed is added per run
    label: str
    main: bool = True  # a Table 1 row (False: generated by an ablation)
    compare_to: str | None = None  # the cell this one varies: paired-tested against it too
    seeds: list[int] | None = None  # the seeds it runs for (None: the grid's)

    @property
    def needs_teacher(self) -> bool:
        return self.method == "seq-kd" or get_method(self.method).needs_teacher


@dataclass
class Grid:
    path: Path
    raw: dict
    name: str
    corpus: str
    directions: list[str]
    vocab_size: int
    max_train: int | None
    test_max_sentences: int | None
    beam: int
    seq_kd_beam: int
    bootstrap_samples: int
    store_teachers: bool
    seeds: list[int]
    teacher_preset: str
    teacher_overrides: list[str]
    cells: dict[str, Cell]
    baselines: dict[str, str | None]  # nokd, kd -> cell name
    heads_rows: list[tuple[int, str | None, str]] = field(default_factory=list)  # (N, nokd cell, A2D cell)
    granularity_rows: list[tuple[str, str]] = field(default_factory=list)  # (label, cell)
    att_kind_rows: list[tuple[str, str]] = field(default_factory=list)  # (kind, cell)
    ablation_base: str | None = None  # the A2D cell the ablations vary
    continue_from: str | None = None  # another grid: its data and teacher, and its shorter student runs to go on from

    @property
    def teacher_grid(self) -> str:
        """The grid whose teacher this one distils from (itself, or the grid it continues)."""
        return self.continue_from or self.name

    def teacher_config(self):
        return load_config(self.teacher_preset, self.teacher_overrides)

    def cell_seeds(self, cell: Cell) -> list[int]:
        return self.seeds if cell.seeds is None else cell.seeds

    def cell_config(self, cell: Cell, seed: int):
        return load_config(cell.preset, cell.overrides + [f"seed={seed}", f"method={cell.method}"])


def _str_list(value, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
        raise UserError(f"{where}: expected a list of key=value strings")
    return [str(v) for v in value]


def _int(value, where: str, low: int = 1, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise UserError(f"{where}: expected an integer >= {low}" + (" or null" if allow_none else "")
                        + f", got {value!r}")
    return value


def _bool(value, where: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{where}: expected true or false, got {value!r}")
    return value


def _some_seeds(value, seeds: list[int], where: str) -> list[int] | None:
    """A cell's own seeds: None (the grid's), or some of the grid's, each once (the paired tests need the baselines'
    runs of the same seeds)."""
    if value is None:
        return None
    if not isinstance(value, list) or not value or len(set(value)) != len(value) \
            or any(isinstance(s, bool) or s not in seeds for s in value):
        raise UserError(f"{where}: expected a list of some of the grid's seeds ({', '.join(map(str, seeds))}), each once")
    return list(value)


def _continue_from(value, path: Path, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not NAME_RE.match(value) or value == name:
        raise UserError(f"{path}: continue_from: expected the name of another grid, got {value!r}")
    return value


def load_grid(path: Path | str) -> Grid:
    """Read and check a grid file: unknown keys, methods, presets and every override fail here, before any work."""
    path = Path(path)
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise UserError(str(e)) from None
    unknown = sorted(set(raw) - GRID_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(GRID_KEYS))})")
    for key in ("name", "teacher", "student_preset", "methods"):
        if key not in raw:
            raise UserError(f"{path}: missing key {key!r}")
    name = str(raw["name"])
    if not NAME_RE.match(name):
        raise UserError(f"{path}: name {name!r}: use lower-case letters, digits, '.', '_', '-'")
    corpus = str(raw.get("corpus", "multi30k"))
    directions = raw.get("directions", ["de-en"])
    if not isinstance(directions, list) or not directions:
        raise UserError(f"{path}: directions: expected a list like [de-en, en-de]")
    for d in directions:
        parts = str(d).split("-")
        if len(parts) != 2:
            raise UserError(f"{path}: direction {d!r}: write it src-tgt, e.g. de-en")
        corpus_spec(corpus, *parts)
    directions = [str(d) for d in directions]
    if len(set(directions)) != len(directions):
        raise UserError(f"{path}: directions: listed twice")
    seeds = raw.get("seeds", [1])
    if not isinstance(seeds, list) or not seeds or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        raise UserError(f"{path}: seeds: expected a list of integers")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: seeds: listed twice")
    teacher = raw["teacher"]
    if not isinstance(teacher, dict) or "preset" not in teacher or set(teacher) - {"preset", "overrides"}:
        raise UserError(f"{path}: teacher: expected {{preset: NAME, overrides: [key=value, ...]}}")
    student_preset = str(raw["student_preset"])
    student_overrides = _str_list(raw.get("student_overrides"), f"{path}: student_overrides")

    methods = raw["methods"]
    if not isinstance(methods, dict) or not methods:
        raise UserError(f"{path}: methods: expected a mapping of cell name -> {{method: NAME, ...}}")
    cells: dict[str, Cell] = {}
    for cname, spec in methods.items():
        cname = str(cname)
        if not NAME_RE.match(cname) or cname == TEACHER or cname.startswith("seqkd-data"):
            raise UserError(f"{path}: methods: cell name {cname!r}: use lower-case letters, digits, '.', '_', '-' "
                            f"(not {TEACHER!r})")
        if not isinstance(spec, dict) or "method" not in spec:
            raise UserError(f"{path}: methods: {cname}: expected {{method: NAME, overrides: [...]}}")
        extra = set(spec) - CELL_KEYS
        if extra:
            raise UserError(f"{path}: methods: {cname}: unknown key(s) {', '.join(sorted(extra))}")
        method = str(spec["method"])
        get_method(method)
        label = spec.get("label")
        if label is None:
            canonical = {"none": "nokd"}.get(method, method)
            label = LABELS.get(method, method) + ("" if cname == canonical else f" [{cname}]")
        own = _str_list(spec.get("overrides"), f"{path}: methods: {cname}: overrides")
        cells[cname] = Cell(cname, method, str(spec.get("preset", student_preset)), student_overrides + own, str(label),
                            compare_to=None if spec.get("compare_to") is None else str(spec["compare_to"]),
                            seeds=_some_seeds(spec.get("seeds"), seeds, f"{path}: methods: {cname}: seeds"))
    for cell in cells.values():
        if cell.compare_to is not None and (cell.compare_to not in cells or cell.compare_to == cell.name):
            raise UserError(f"{path}: methods: {cell.name}: compare_to {cell.compare_to!r}: not another cell of methods")

    baselines_raw = raw.get("baselines") or {}
    if not isinstance(baselines_raw, dict) or set(baselines_raw) - {"nokd", "kd"}:
        raise UserError(f"{path}: baselines: expected {{nokd: CELL, kd: CELL}}")
    baselines: dict[str, str | None] = {}
    for role, method in (("nokd", "none"), ("kd", "kd")):
        chosen = baselines_raw.get(role)
        if chosen is None:
            chosen = role if role in cells else next((c.name for c in cells.values() if c.method == method), None)
        elif str(chosen) not in cells:
            raise UserError(f"{path}: baselines: {role}: no cell {chosen!r} in methods")
        baselines[role] = None if chosen is None else str(chosen)

    grid = Grid(path=path, raw=raw, name=name, corpus=corpus, directions=directions,
                vocab_size=_int(raw.get("vocab_size", 8000), f"{path}: vocab_size", low=5),
                max_train=_int(raw.get("max_train"), f"{path}: max_train", allow_none=True),
                test_max_sentences=_int(raw.get("test_max_sentences"), f"{path}: test_max_sentences", allow_none=True),
                beam=_int(raw.get("beam", 5), f"{path}: beam"),
                seq_kd_beam=_int(raw.get("seq_kd_beam", 5), f"{path}: seq_kd_beam"),
                bootstrap_samples=_int(raw.get("bootstrap_samples", 1000), f"{path}: bootstrap_samples", low=2),
                store_teachers=_bool(raw.get("store_teachers", False), f"{path}: store_teachers"),
                seeds=list(seeds), teacher_preset=str(teacher["preset"]),
                teacher_overrides=_str_list(teacher.get("overrides"), f"{path}: teacher: overrides"),
                cells=cells, baselines=baselines, continue_from=_continue_from(raw.get("continue_from"), path, name))
    _add_ablations(grid, raw.get("ablations"))

    # every configuration must resolve now, not hours into the grid
    try:
        grid.teacher_config()
    except ConfigError as e:
        raise UserError(f"{path}: teacher: {e}") from None
    for cell in grid.cells.values():
        try:
            grid.cell_config(cell, grid.seeds[0])
        except ConfigError as e:
            raise UserError(f"{path}: cell {cell.name}: {e}") from None
    return grid


def _add_ablations(grid: Grid, spec) -> None:
    if not spec:
        return
    where = f"{grid.path}: ablations"
    if not isinstance(spec, dict) or set(spec) - ABLATION_KEYS:
        raise UserError(f"{where}: expected a mapping with keys {', '.join(sorted(ABLATION_KEYS))}")
    base_name = str(spec.get("base", "a2d"))
    base = grid.cells.get(base_name)
    if base is None or base.method != "a2d":
        raise UserError(f"{where}: base {base_name!r}: must be a cell of method a2d in methods")
    nokd = grid.cells.get(grid.baselines["nokd"]) if grid.baselines["nokd"] else None
    grid.ablation_base = base.name
    seeds = _some_seeds(spec.get("seeds"), grid.seeds, f"{where}: seeds")

    def add(name: str, like: Cell, method: str, extra: list[str], label: str, compare: bool = False) -> str:
        if name not in grid.cells:  # a cell the grid defines itself is used as it is
            grid.cells[name] = Cell(name, method, like.preset, like.overrides + extra, label, main=False,
                                    compare_to=like.name if compare else None, seeds=seeds)
        return name

    heads = spec.get("heads") or []
    if not isinstance(heads, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in heads):
        raise UserError(f"{where}: heads: expected a list of positive integers")
    try:
        base_cfg = grid.cell_config(base, grid.seeds[0])
    except ConfigError as e:
        raise UserError(f"{grid.path}: cell {base.name}: {e}") from None
    own = (base_cfg.encoder_attention_heads, base_cfg.decoder_attention_heads)
    for n in heads:
        extra = [f"encoder_attention_heads={n}", f"decoder_attention_heads={n}"]
        a2d_name = base.name if own == (n, n) else add(f"{base.name}-heads-{n}", base, "a2d", extra, f"A2D, {n} heads")
        nokd_name = None
        if nokd is not None:
            nokd_name = nokd.name if own == (n, n) else add(f"{nokd.name}-heads-{n}", nokd, nokd.method, extra,
                                                            f"No KD, {n} heads")
        grid.heads_rows.append((n, nokd_name, a2d_name))

    if spec.get("granularity"):
        layer = add(f"{base.name}-layerwise", base, "a2d", ["att_granularity=layer"], "A2D (layer-wise)", compare=True)
        grid.granularity_rows = [("head-wise", base.name), ("layer-wise", layer)]

    kinds = spec.get("att_kinds") or []
    if not isinstance(kinds, list) or any(k not in ATT_KINDS for k in kinds):
        raise UserError(f"{where}: att_kinds: choose from {', '.join(ATT_KINDS)}")
    for kind in kinds:
        name = base.name if kind == base_cfg.att_kinds else add(f"{base.name}-att-{kind}", base, "a2d",
                                                               [f"att_kinds={kind}"], f"A2D, {kind}", compare=True)
        grid.att_kind_rows.append((kind, name))


# =============================================================================================== the plan
@dataclass
class Job:
    direction: str
    cell: Cell | None  # None: the teacher
    seed: int | None
    run: Path

    @property
    def id(self) -> str:
        return f"{self.direction}/{TEACHER}" if self.cell is None else f"{self.direction}/{self.cell.name}-s{self.seed}"

    @property
    def name(self) -> str:
        return TEACHER if self.cell is None else self.cell.name


def plan(grid: Grid, runs: Path) -> list[Job]:
    jobs = []
    for d in grid.directions:
        jobs.append(Job(d, None, None, runs / grid.teacher_grid / d / TEACHER))
        for cell in grid.cells.values():
            for seed in grid.cell_seeds(cell):
                jobs.append(Job(d, cell, seed, runs / grid.name / d / f"{cell.name}-s{seed}"))
    return jobs


def data_dir(grid: Grid, runs: Path, direction: str) -> Path:
    prefix = "data" if grid.corpus == "multi30k" else f"data-{grid.corpus}"
    return runs / f"{prefix}-{direction}"


def eval_dir(grid: Grid, runs: Path, direction: str) -> Path:
    base = data_dir(grid, runs, direction)
    return base if not grid.test_max_sentences else base.with_name(f"{base.name}-test{grid.test_max_sentences}")


def seqkd_dir(grid: Grid, runs: Path, direction: str) -> Path:
    return runs / grid.name / direction / f"seqkd-data-b{grid.seq_kd_beam}"


def run_status(run: Path) -> str:
    """``finished``, ``started`` (resumable), ``broken`` (files but no checkpoint: start over) or ``new``."""
    state = run / "last" / "trainer" / "state.json"
    if state.is_file():
        return "finished" if json.loads(state.read_text()).get("finished", False) else "started"
    if run.is_dir() and any(p.name not in (WALL_FILE,) for p in run.iterdir()):
        return "broken"
    return "new"


# =============================================================================================== environment
def hardware() -> str:
    return provenance.hardware()


def commit() -> str:
    return provenance.git_commit(str(REPO))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha(lines: list[str]) -> str:
    return hashlib.sha256("".join(x + "\n" for x in lines).encode("utf-8")).hexdigest()


def _split_lines(text: str) -> list[str]:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _read_lines(path: Path) -> list[str]:
    return _split_lines(path.read_text(encoding="utf-8"))


def _read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg}); remove it or fix it") from None


# =============================================================================================== stages
def ensure_data(grid: Grid, runs: Path, direction: str, log, results: Path | None = None) -> Path:
    out = data_dir(grid, runs, direction)
    src, tgt = direction.split("-")
    # A stored teacher outlives the data it was trained on: the data is prepared again with the teacher's own
    # SentencePiece model (training a new one gives the same pieces but not the same file, and the students
    # must share the teacher's vocabulary byte for byte).
    stored_vocab = _stored_teacher_vocab(grid, results, direction)
    request = {"corpus": grid.corpus, "vocab_size": grid.vocab_size, "max_train": grid.max_train}
    if (out / "meta.json").is_file():
        recorded = _read_json(out / "quality-data.json") or {"max_train": _read_json(out / "meta.json")["max_train"]}
        differ = [k for k in request if k in recorded and recorded[k] != request[k]]
        if differ:
            raise UserError(f"{out} was prepared with {', '.join(f'{k}={recorded[k]}' for k in differ)}; the grid asks "
                            f"for {', '.join(f'{k}={request[k]}' for k in differ)}: use another --runs-dir")
        _check_teacher_vocab(stored_vocab, out)
        return out
    log(f"== prepare {grid.corpus} {direction} -> {out}")
    meta = prepare(out, locate_corpus(grid.corpus, src, tgt), src, tgt, vocab_size=grid.vocab_size,
                   max_train=grid.max_train, vocab=stored_vocab, log=log)
    atomic_write_text(out / "quality-data.json", json.dumps(request, indent=2) + "\n")
    log("\n".join(summary_lines(meta)))
    return out


def _stored_teacher_vocab(grid: Grid, results: Path | None, direction: str) -> Path | None:
    """The stored teacher's ``sentencepiece.model`` for ``direction``, checked against its manifest; None if none."""
    if results is None:
        return None
    store = teacher_store(grid, results, direction)
    manifest = _read_json(store / MANIFEST)
    if not manifest:
        return None
    _check_stored_files(store, manifest, ["sentencepiece.model"])
    return store / "sentencepiece.model"


def _check_teacher_vocab(stored_vocab: Path | None, data: Path) -> None:
    if stored_vocab is not None and sha256_file(data / "sentencepiece.model") != sha256_file(stored_vocab):
        raise UserError(f"{data}: prepared with another SentencePiece model than the stored teacher's {stored_vocab}; "
                        "remove this data directory and run again (it is prepared anew with the teacher's model)")


def ensure_eval_dir(grid: Grid, runs: Path, direction: str) -> Path:
    """The data directory the test is scored on: the data itself, or a copy holding its first N test pairs."""
    data, out = data_dir(grid, runs, direction), eval_dir(grid, runs, direction)
    if out == data or (out / "meta.json").is_file():
        return out
    meta = json.loads((data / "meta.json").read_text(encoding="utf-8"))
    n = grid.test_max_sentences
    with atomic_dir(out) as tmp:
        shutil.copyfile(data / "sentencepiece.model", tmp / "sentencepiece.model")
        for lang in (meta["src"], meta["tgt"]):
            lines = _read_lines(data / f"test.{lang}")[:n]
            (tmp / f"test.{lang}").write_text("".join(x + "\n" for x in lines), encoding="utf-8")
        meta["test_max_sentences"] = n
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def ensure_seqkd_data(grid: Grid, runs: Path, direction: str, data: Path, teacher: Path, log) -> Path:
    out = seqkd_dir(grid, runs, direction)
    if (out / "meta.json").is_file():
        return out
    log(f"== {direction}: the teacher's translations of the training sources (beam {grid.seq_kd_beam}) -> {out}")
    start = time.perf_counter()
    distill_data(teacher, data, out, beam=grid.seq_kd_beam, log=log)
    atomic_write_text(out.with_name(out.name + ".timing.json"),
                      json.dumps({"seconds": round(time.perf_counter() - start, 1), "hardware": hardware(),
                                  "commit": commit(), "finished": now()}, indent=2) + "\n")
    return out


def continuable(job: Job, grid: Grid) -> tuple[Path | None, str]:
    """The finished run of the grid this one continues that ``job`` can go on from, or None, and why.

    It is the run of the same cell and seed (``RUNS/<continue_from>/<dir>/<cell>-s<seed>``) whose settings are the
    job's but for a smaller or equal ``max_epochs``. Nothing before that epoch depends on ``max_epochs`` (the
    inverse-sqrt schedule, lambda's decay and the batch order do not; resuming restores every random state), so
    going on from its last checkpoint trains the same student as starting over, in the epochs not yet run."""
    source = job.run.parents[2] / grid.continue_from / job.direction / job.run.name
    status = run_status(source)
    if status != "finished":
        return None, f"{source} is " + ("not finished" if status == "started" else "not a finished run")
    want = grid.cell_config(job.cell, job.seed).to_dict()
    differ = _config_differences(source / "config.yaml", {k: v for k, v in want.items() if k != "max_epochs"})
    if differ:
        return None, f"{source} was trained with {', '.join(differ)}"
    had = read_yaml(source / "config.yaml").get("max_epochs", want["max_epochs"])
    if had > want["max_epochs"]:
        return None, f"{source} was trained for up to {had} epochs, more than this grid's {want['max_epochs']}"
    state = _read_json(source / "last" / "trainer" / "state.json", {})
    return source, f"{source} (max_epochs {had} -> {want['max_epochs']}, {state.get('epoch', 1) - 1} epoch(s) done)"


def copy_to_continue(source: Path, run: Path, cfg) -> None:
    """Copy a finished run (not its test results) to ``run`` as a run to resume under ``cfg``, in one piece."""
    from a2d.config import save_config

    with atomic_dir(run) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(CELL_FILE, "test.json", "test.hyp"))
        state_file = tmp / "last" / "trainer" / "state.json"
        state = json.loads(state_file.read_text(encoding="utf-8"))
        state["finished"] = False
        state_file.write_text(json.dumps(state), encoding="utf-8")
        save_config(cfg, tmp / "config.yaml")


def train_job(job: Job, grid: Grid, data: Path, teacher_run: Path, seqkd: Path | None, log) -> None:
    """Train (or resume) the job's run, adding this piece's wall time to ``RUN/wall.json``."""
    run = job.run
    status = run_status(run)
    if status == "finished":
        return
    if status == "broken":
        log(f"   {job.id}: {run} holds files but no checkpoint (interrupted before its first save): starting over")
        shutil.rmtree(run)
        status = "new"
    source = None
    if status == "new" and job.cell is not None and grid.continue_from:
        source, why = continuable(job, grid)
        if source is not None:
            log(f"== {job.id}: continuing {why}")
            copy_to_continue(source, run, grid.cell_config(job.cell, job.seed))
            status = "started"
        else:
            log(f"   {job.id}: not continuing a run of grid {grid.continue_from}: {why}; training from the start")
    pieces = (_read_json(run / WALL_FILE, {}) or {}).get("pieces", []) if status == "started" else []
    piece = {"hardware": hardware(), "commit": commit(), "started": now(), "seconds": 0.0,
             "resumed": status == "started"}
    if source is not None:
        piece["continued_from"] = str(source)
    start = time.perf_counter()

    def record() -> None:
        piece["seconds"] = round(time.perf_counter() - start, 1)
        piece["ended"] = now()
        if run.is_dir():
            atomic_write_text(run / WALL_FILE, json.dumps({"pieces": pieces + [piece]}, indent=2) + "\n")

    def tick(msg: str) -> None:  # called by the recipes after the checkpoint folder exists, at every epoch end
        log(f"   [{job.id}] {msg}")
        record()

    resume = status == "started"
    log(f"== {job.id}: " + ("resuming " if resume else "training ") + str(run))
    if job.cell is None:
        train(grid.teacher_config(), data, run, resume=resume, log=tick)
    else:
        cfg = grid.cell_config(job.cell, job.seed)
        if job.cell.method == "none":
            train(cfg, data, run, resume=resume, log=tick)
        elif job.cell.method == "seq-kd":
            distill(cfg, seqkd, run, None, resume=resume, log=tick)
        else:
            distill(cfg, data, run, teacher_run, resume=resume, log=tick)
    record()


def _metrics(run: Path) -> dict:
    out = {"valid_best_bleu": None, "valid_best_epoch": None, "valid_epochs": 0, "valid_curve": [], "final_att": None,
           "updates": None, "loss_terms": {}}
    path = run / "metrics.jsonl"
    if not path.is_file():
        return out
    sums: dict[str, dict[int, list[float]]] = {}  # term -> epoch -> [sum, count]
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("type") == "train" and rec.get("epoch") is not None:
            terms = {"ce": rec.get("ce")}
            if "att" in rec:
                terms["att"], terms["w_att"] = rec["att"], rec.get("w_att", 1.0)
                terms["weighted_att"] = rec["att"] * rec.get("w_att", 1.0)
            if "kd" in rec:
                terms["weighted_kd"] = rec["kd"] * rec.get("w_kd", 1.0)
            for key, value in terms.items():
                if value is not None:
                    acc = sums.setdefault(key, {}).setdefault(int(rec["epoch"]), [0.0, 0])
                    acc[0] += float(value)
                    acc[1] += 1
        if rec.get("type") == "valid" and rec.get("valid_bleu") is not None:
            out["valid_curve"].append(round(float(rec["valid_bleu"]), 2))
            if out["valid_best_bleu"] is None or rec["valid_bleu"] > out["valid_best_bleu"]:
                out["valid_best_bleu"], out["valid_best_epoch"] = float(rec["valid_bleu"]), rec.get("epoch")
        if rec.get("type") == "train" and "att" in rec:
            out["final_att"] = float(rec["att"])
    out["valid_epochs"] = len(out["valid_curve"])
    # mean of each logged training term per epoch (what the loss is made of, and how it moves)
    out["loss_terms"] = {key: [round(total / n, 4) for _, (total, n) in sorted(by_epoch.items())]
                         for key, by_epoch in sums.items()}
    state = _read_json(run / "last" / "trainer" / "state.json", {}) or {}
    out["updates"] = state.get("update")
    return out


def evaluate_job(job: Job, grid: Grid, evaldir: Path, log) -> dict:
    """Score the run on the test split, write ``test.json``/``test.hyp`` and ``cell.json``; return the record."""
    run = job.run
    start = time.perf_counter()
    result = evaluate_model(run, evaldir, split="test", beam=grid.beam, out=run / "test.json", progress=False)
    hyps = _read_lines(run / "test.hyp")
    refs = _read_lines(evaldir / f"test.{result['tgt']}")
    pieces = (_read_json(run / WALL_FILE, {}) or {}).get("pieces", [])
    cfg = grid.teacher_config() if job.cell is None else grid.cell_config(job.cell, job.seed)
    low, high = result["bleu_ci"]
    record = {
        "id": job.id, "grid": grid.name, "direction": job.direction, "cell": job.name,
        "seed": cfg.seed if job.cell is None else job.seed,
        "role": TEACHER if job.cell is None else "student",
        "method": None if job.cell is None else job.cell.method,
        "label": "Teacher" if job.cell is None else job.cell.label,
        "preset": grid.teacher_preset if job.cell is None else job.cell.preset,
        "overrides": grid.teacher_overrides if job.cell is None else job.cell.overrides + [f"seed={job.seed}"],
        "run": str(run),
        "bleu": result["bleu"], "bleu_ci": [low, high], "bleu_ci_halfwidth": (high - low) / 2,
        "chrf": result["chrf"], "signature": result["signature"], "test_sentences": result["sentences"],
        "beam": grid.beam, "decode_seconds": result["decode_seconds"],
        **_metrics(run),
        "train_seconds": round(sum(p.get("seconds", 0.0) for p in pieces), 1) if pieces else None,
        "pieces": pieces,
        **({"continued_from": next(p["continued_from"] for p in pieces if "continued_from" in p)}
           if any("continued_from" in p for p in pieces) else {}),
        "hardware": "; ".join(dict.fromkeys(p["hardware"] for p in pieces)) if pieces else hardware(),
        "commit": ", ".join(dict.fromkeys(p["commit"] for p in pieces)) if pieces else commit(),
        "eval_hardware": hardware(), "eval_commit": commit(), "eval_seconds": round(time.perf_counter() - start, 1),
        "finished": now(),
        "hyp_sha256": _sha(hyps), "ref_sha256": _sha(refs),
    }
    if job.cell is not None and job.cell.method == "seq-kd":
        seqkd = seqkd_dir(grid, job.run.parents[2], job.direction)  # job.run = RUNS/<name>/<dir>/<cell>-s<seed>
        timing = _read_json(seqkd.with_name(seqkd.name + ".timing.json"), None)
        record["seq_kd_data_seconds"] = timing.get("seconds") if timing else None
    atomic_write_text(run / CELL_FILE, json.dumps({**record, "hypotheses": hyps, "references": refs}, indent=1) + "\n")
    log(f"   {job.id}: test BLEU {record['bleu']:.2f} ± {record['bleu_ci_halfwidth']:.2f}, chrF {record['chrf']:.2f}"
        + (f", valid BLEU {record['valid_best_bleu']:.2f}" if record["valid_best_bleu"] is not None else ""))
    return record


# =============================================================================================== results
def results_paths(grid: Grid, results: Path) -> tuple[Path, Path]:
    return results / f"quality-{grid.name}.json", results / f"quality-{grid.name}.md"


def hyps_dir(grid: Grid, results: Path) -> Path:
    return results / f"quality-{grid.name}-hyps"


def _gz_lines(lines: list[str]) -> bytes:
    """gzip of the lines, byte-for-byte reproducible (no file name, mtime 0)."""
    return gzip.compress("".join(x + "\n" for x in lines).encode("utf-8"), mtime=0)


def _read_gz_lines(path: Path) -> list[str] | None:
    try:
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
    except FileNotFoundError:
        return None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not a readable gzip text file ({e}); remove it") from None
    return _split_lines(text)


def save_hypotheses(grid: Grid, results: Path, records: dict[str, dict]) -> None:
    """Keep every cell's test translations beside the results JSON.

    ``RESULTS/quality-<name>-hyps/<direction>/<cell>-s<seed>.hyp.gz``, so the paired tests of cells trained
    later can still be run once the run folders are gone. The references are not stored (they are the
    corpus's): they are read back from the prepared test data, checked against the JSON's sha256.
    """
    store = hyps_dir(grid, results)
    for rec in records.values():
        if "hypotheses" in rec:
            path = store / f"{rec['id']}.hyp.gz"
            current = _read_gz_lines(path)
            if current is None or _sha(current) != rec.get("hyp_sha256"):
                atomic_write_bytes(path, _gz_lines(rec["hypotheses"]))


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
            lines = _read_lines(ref_file) if ref_file.is_file() else None
            refs[d] = (lines, _sha(lines)) if lines is not None else None
        if "references" not in rec and refs[d] is not None and refs[d][1] == rec.get("ref_sha256"):
            rec["references"] = refs[d][0]
        if "hypotheses" in rec:
            continue
        path = store / f"{rec['id']}.hyp.gz"
        lines = _read_gz_lines(path)
        if lines is None:
            continue
        if _sha(lines) == rec.get("hyp_sha256"):
            rec["hypotheses"] = lines
        else:
            log(f"note: {path} does not hold the translations {rec['id']} was scored with (sha256 differs); ignored")


def teacher_store(grid: Grid, results: Path, direction: str) -> Path:
    return results / f"quality-{grid.teacher_grid}-teachers" / direction


def store_teacher(grid: Grid, results: Path, job: Job, record: dict, log) -> Path:
    """Copy the scored teacher's model folder (``RUN/best``: weights, configs, vocabulary) into the store,
    with a manifest naming the results record it belongs to (by its translations' sha256) and each file's sha256."""
    out = teacher_store(grid, results, job.direction)
    manifest = _read_json(out / MANIFEST)
    if manifest and manifest.get("hyp_sha256") == record["hyp_sha256"]:
        return out
    files = sorted(p for p in (job.run / "best").iterdir() if p.is_file())
    with atomic_dir(out) as tmp:
        for f in files:
            shutil.copyfile(f, tmp / f.name)
        info = {"id": job.id, "bleu": record["bleu"], "hyp_sha256": record["hyp_sha256"], "commit": record["commit"],
                "stored": now(), "files": {f.name: sha256_file(f) for f in files}}
        (tmp / MANIFEST).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    size = sum(f.stat().st_size for f in files) / 2**20
    log(f"   {job.id}: stored the teacher ({size:.1f} MiB) in {out}")
    return out


def stored_teacher(grid: Grid, results: Path, direction: str, record: dict | None) -> Path | None:
    """The stored copy of the teacher the results describe (``record``), every file checked; None if none is stored."""
    out = teacher_store(grid, results, direction)
    manifest = _read_json(out / MANIFEST)
    if manifest is None:
        return None
    if record is None or manifest.get("hyp_sha256") != record.get("hyp_sha256"):
        raise UserError(f"{out}: holds another teacher than the {direction} teacher of {results_paths(grid, results)[0]} "
                        "(their test translations differ); remove one of them")
    _check_stored_files(out, manifest, list(manifest.get("files", {})))
    return out


def _check_stored_files(store: Path, manifest: dict, names: list[str]) -> None:
    """Each named file of a stored teacher is there with the sha256 its manifest recorded."""
    files = manifest.get("files", {})
    for name in names:
        if name not in files or not (store / name).is_file() or sha256_file(store / name) != files[name]:
            raise UserError(f"{store / name}: missing or changed since the teacher was stored (sha256 differs)")


def collect(grid: Grid, runs: Path, results: Path, log=print) -> tuple[dict[str, dict], dict]:
    """All results: those in the results JSON, then every ``cell.json`` under ``RUNS/<name>`` (these win).

    Records from the JSON get their hypotheses back from ``RESULTS/quality-<name>-hyps`` where stored.
    """
    json_path, _ = results_paths(grid, results)
    old = _read_json(json_path, {}) or {}
    records = {r["id"]: r for r in old.get("cells", [])}
    load_hypotheses(grid, runs, results, records, log)
    for path in sorted((runs / grid.name).glob(f"*/*/{CELL_FILE}")):
        rec = _read_json(path)
        if rec.get("grid", grid.name) == grid.name and "id" in rec:
            for key in ("valid_curve", "loss_terms"):  # cells scored before these were recorded
                if key not in rec:
                    rec[key] = _metrics(path.parent)[key]
            records[rec["id"]] = rec
    if grid.continue_from:
        _add_source_teachers(grid, runs, results, records, log)
    return records, old


def _add_source_teachers(grid: Grid, runs: Path, results: Path, records: dict[str, dict], log) -> None:
    """A grid that continues another shares its teacher: the teacher's record comes from that grid's teacher
    run (``RUNS/<continue_from>/<dir>/teacher/cell.json``) or, when the run is gone, from that grid's results."""
    source = None
    for d in grid.directions:
        tid = f"{d}/{TEACHER}"
        path = runs / grid.teacher_grid / d / TEACHER / CELL_FILE
        if path.is_file():
            records[tid] = _read_json(path)
            continue
        if tid in records:
            continue
        if source is None:
            source, _ = collect(replace(grid, name=grid.teacher_grid, continue_from=None), runs, results, log)
        if tid in source:
            records[tid] = source[tid]


def comparisons(grid: Grid, records: dict[str, dict], old: list[dict], log) -> list[dict]:
    """Paired bootstrap of each student against the No-KD and the KD cell of the same direction and seed, and of
    each cell that names one (``compare_to``; the ablation cells: their base) against the cell it varies.

    A comparison whose two hypothesis files are unchanged is taken from the previous results JSON.
    """
    pairs = []
    for d in grid.directions:
        for seed in grid.seeds:
            for role in ("nokd", "kd"):
                base = grid.baselines[role]
                if base:
                    pairs += [(d, seed, base, c) for c in grid.cells if c != base]
            for _, nokd_name, a2d_name in grid.heads_rows:
                if nokd_name and nokd_name != grid.baselines["nokd"]:
                    pairs.append((d, seed, nokd_name, a2d_name))
            pairs += [(d, seed, c.compare_to, c.name) for c in grid.cells.values() if c.compare_to]
    cache = {(c["direction"], c["seed"], c["baseline"], c["system"]): c for c in old}
    out, todo = [], {}
    for d, seed, base, system in dict.fromkeys(pairs):
        b, s = records.get(f"{d}/{base}-s{seed}"), records.get(f"{d}/{system}-s{seed}")
        if b is None or s is None:
            continue
        hit = cache.get((d, seed, base, system))
        if (hit and hit.get("baseline_sha256") == b["hyp_sha256"] and hit.get("system_sha256") == s["hyp_sha256"]
                and hit.get("n_samples") == grid.bootstrap_samples):
            out.append(hit)
        elif "hypotheses" in b and "hypotheses" in s and b.get("ref_sha256") == s.get("ref_sha256"):
            todo.setdefault((d, seed, base), []).append(system)
        else:
            log(f"note: {d} seed {seed}: {system} vs {base} not compared (hypotheses of one side not here, "
                "or scored on other references)")
    for (d, seed, base), systems in todo.items():
        b = records[f"{d}/{base}-s{seed}"]
        res = paired_bootstrap(b["hypotheses"], {s: records[f"{d}/{s}-s{seed}"]["hypotheses"] for s in systems},
                               b["references"], n_samples=grid.bootstrap_samples)
        for system, r in res.items():
            out.append({"direction": d, "seed": seed, "baseline": base, "system": system,
                        "p_value": r["p_value"], "chrf_p_value": r["chrf_p_value"], "bleu": r["bleu"],
                        "baseline_bleu": r["baseline_bleu"], "delta": r["delta"], "n_samples": grid.bootstrap_samples,
                        "baseline_sha256": b["hyp_sha256"],
                        "system_sha256": records[f"{d}/{system}-s{seed}"]["hyp_sha256"]})
    order = {d: i for i, d in enumerate(grid.directions)}
    names = {c: i for i, c in enumerate(grid.cells)}
    out.sort(key=lambda c: (order.get(c["direction"], 99), c["seed"], names.get(c["baseline"], 99),
                            names.get(c["system"], 99)))
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def best_a2d(grid: Grid, records: dict[str, dict], direction: str) -> tuple[str, int, float] | None:
    """The Table 1 A2D cell with the best mean validation BLEU, and its best seed: (cell, seed, valid BLEU)."""
    best = None
    for cell in grid.cells.values():
        if not cell.main or cell.method not in A2D_METHODS:
            continue
        recs = [(s, records.get(f"{direction}/{cell.name}-s{s}")) for s in grid.seeds]
        recs = [(s, r) for s, r in recs if r and r.get("valid_best_bleu") is not None]
        if not recs:
            continue
        mean = statistics.fmean(r["valid_best_bleu"] for _, r in recs)
        seed = max(recs, key=lambda sr: sr[1]["valid_best_bleu"])[0]
        if best is None or mean > best[2]:
            best = (cell.name, seed, mean)
    return best


def alignment_figures(grid: Grid, records: dict[str, dict], results: Path, old: dict, log) -> dict:
    from a2d.analysis import plot_alignment

    out = dict(old or {})
    for d in grid.directions:
        best = best_a2d(grid, records, d)
        if best is None:
            continue
        cell, seed, valid = best
        run = Path(records[f"{d}/{cell}-s{seed}"]["run"])
        png = results / f"quality-{grid.name}-alignment-{d}.png"
        prev = out.get(d)
        if prev and prev.get("cell") == cell and prev.get("seed") == seed and png.is_file() and \
                prev.get("hyp_sha256") == records[f"{d}/{cell}-s{seed}"]["hyp_sha256"]:
            continue
        if not (run / "method.json").is_file():
            log(f"note: {d}: the alignment figure needs {run}/method.json (the run is on another machine?)")
            continue
        summary = plot_alignment(run, png)
        out[d] = {"cell": cell, "seed": seed, "valid_bleu": valid, "png": png.name, "summary": summary["kinds"],
                  "aam": summary["aam"], "granularity": summary["granularity"],
                  "hyp_sha256": records[f"{d}/{cell}-s{seed}"]["hyp_sha256"]}
        out[d]["summary_text"] = _format_summary(summary)
    return out


def _format_summary(summary: dict) -> str:
    from a2d.analysis import format_summary

    return format_summary(summary)


def write_report(grid: Grid, runs: Path, results: Path, log, figures: bool = True) -> tuple[Path, Path]:
    records, old = collect(grid, runs, results, log)
    save_hypotheses(grid, results, records)
    comps = comparisons(grid, records, old.get("comparisons", []), log)
    alignment = old.get("alignment", {})
    if figures:
        alignment = alignment_figures(grid, records, results, alignment, log)
    json_path, md_path = results_paths(grid, results)
    try:
        grid_file = grid.path.resolve().relative_to(REPO).as_posix()
    except ValueError:
        grid_file = str(grid.path)
    strip = ("hypotheses", "references")
    info = {
        "name": grid.name, "grid_file": grid_file, "grid": grid.raw, "updated": now(),
        "cells": [{k: v for k, v in records[i].items() if k not in strip} for i in _ordered_ids(grid, records)],
        "comparisons": comps, "alignment": alignment,
    }
    atomic_write_text(json_path, json.dumps(info, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(grid, grid_file, records, comps, alignment))
    return json_path, md_path


def _ordered_ids(grid: Grid, records: dict[str, dict]) -> list[str]:
    order = {d: i for i, d in enumerate(grid.directions)}
    names = {c: i for i, c in enumerate([TEACHER, *grid.cells])}

    def key(i):
        r = records[i]
        return (order.get(r["direction"], 99), r["direction"], names.get(r["cell"], 999), r["cell"], r.get("seed") or 0)

    return sorted(records, key=key)


# =============================================================================================== markdown
DASH = "–"


def _records(grid: Grid, records: dict, direction: str, cell: str, seeds=None) -> list[dict]:
    if cell == TEACHER:
        r = records.get(f"{direction}/{TEACHER}")
        return [r] if r else []
    return [records[f"{direction}/{cell}-s{s}"] for s in (grid.seeds if seeds is None else seeds)
            if f"{direction}/{cell}-s{s}" in records]


def _bleu(recs: list[dict], n_seeds: int) -> str:
    if not recs:
        return DASH
    b = statistics.fmean(r["bleu"] for r in recs)
    hw = statistics.fmean(r["bleu_ci_halfwidth"] for r in recs)
    text = f"{b:.2f} ± {hw:.2f}"
    if n_seeds > 1:
        text += f" ({len(recs)}/{n_seeds} seeds)" if len(recs) < n_seeds else f" (mean of {len(recs)})"
    return text


def _p(grid: Grid, comps: dict, direction: str, base: str | None, cell: str, seeds=None) -> str:
    if base is None:
        return DASH
    if cell == base:
        return "·"
    values = [comps.get((direction, s, base, cell)) for s in (grid.seeds if seeds is None else seeds)]
    values = [f"{v['p_value']:.3f}" for v in values if v is not None]
    return " / ".join(values) if values else DASH


def _num(value, fmt: str = ".2f") -> str:
    return DASH if value is None else format(value, fmt)


def _duration(seconds) -> str:
    if seconds is None:
        return DASH
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(grid: Grid, grid_file: str, records: dict, comps_list: list[dict], alignment: dict) -> str:
    comps = {(c["direction"], c["seed"], c["baseline"], c["system"]): c for c in comps_list}
    dirs = grid.directions
    nokd, kd = grid.baselines["nokd"], grid.baselines["kd"]
    planned = len(dirs) * (1 + sum(len(grid.cell_seeds(c)) for c in grid.cells.values()))
    done = sum(1 for d in dirs for c in [TEACHER, *grid.cells] for _ in _records(grid, records, d, c))
    any_rec = next(iter(records.values()), None)
    # a resumed run's record joins its pieces' hardware with "; " and its commits with ", "
    hw = sorted({h for r in records.values() for h in r["hardware"].split("; ")})
    commits = sorted({c for r in records.values() for c in r["commit"].split(", ")})
    total = sum(r.get("train_seconds") or 0.0 for r in records.values())
    student_overrides = [str(o) for o in grid.raw.get("student_overrides") or []]
    test_desc = "the whole test split" if not grid.test_max_sentences else \
        f"the first {grid.test_max_sentences} sentences of the test split"
    lines = [
        f"# Quality benchmark `{grid.name}`", "",
        f"Grid `{grid_file}`: corpus {grid.corpus} ({test_desc}; Multi30k's is test_2016_flickr), "
        f"vocabulary {grid.vocab_size}, " + (f"first {grid.max_train} training pairs, " if grid.max_train else "")
        + f"seeds {', '.join(map(str, grid.seeds))}. Teacher `{grid.teacher_preset}`"
        + (f" `{' '.join(grid.teacher_overrides)}`" if grid.teacher_overrides else "")
        + f"; students `{grid.raw['student_preset']}`"
        + (f" `{' '.join(student_overrides)}`" if student_overrides else "")
        + " plus each cell's overrides (per-cell table below).", "",
        f"{done} of {planned} cells done; training time {_duration(total)} in all; hardware: {'; '.join(hw) or DASH}; "
        f"commit(s): {', '.join(commits) or DASH}.",
        f"Regenerate: `python benchmarks/quality.py {grid_file} --report-only`.", "",
    ]
    if any_rec:
        lines += [f"sacreBLEU: `{any_rec['signature']}`, beam {grid.beam}.", ""]

    def present(names) -> bool:
        return any(_records(grid, records, d, n) for d in dirs for n in names if n)

    # ---- Table 1
    header = ["model"]
    for d in dirs:
        header += [f"{d} BLEU", "p vs No KD", "p vs KD"]
    rows = []
    teacher_row = ["Teacher"]
    for d in dirs:
        teacher_row += [_bleu(_records(grid, records, d, TEACHER), 1), "", ""]
    rows.append(teacher_row)
    for cell in grid.cells.values():
        if not cell.main:
            continue
        row = [cell.label]
        for d in dirs:
            row += [_bleu(_records(grid, records, d, cell.name), len(grid.cell_seeds(cell))),
                    _p(grid, comps, d, nokd, cell.name),
                    _p(grid, comps, d, kd, cell.name)]
        rows.append(row)
    lines += ["## Table 1: test BLEU", ""] + _table(header, rows) + [
        "",
        "BLEU ± half-width of the 95% bootstrap confidence interval (sacreBLEU, 1000 resamples). p: paired "
        f"bootstrap resampling (sacreBLEU's paired test, {grid.bootstrap_samples} samples) against the No-KD "
        "(`" + (nokd or DASH) + "`) and the vanilla-KD (`" + (kd or DASH) + "`) student of the same seed, one value "
        "per seed; small p = the difference is unlikely to be resampling noise. `·` = the baseline itself, "
        f"{DASH} = not run yet.", ""]

    # ---- validation
    header = ["model"] + [f"{d} valid BLEU" for d in dirs]
    rows = []
    for cell in grid.cells.values():
        if not cell.main:
            continue
        row = [cell.label]
        for d in dirs:
            recs = _records(grid, records, d, cell.name)
            row.append(_num(_mean([r.get("valid_best_bleu") for r in recs])))
        rows.append(row)
    lines += ["## Validation BLEU (choose defaults here, not on test)", ""] + _table(header, rows) + [""]
    bests = []
    for d in dirs:
        best = best_a2d(grid, records, d)
        if best:
            bests.append(f"{d}: `{best[0]}` ({best[2]:.2f})")
    lines += ["Best per-epoch validation BLEU of each run (the checkpoint that is scored on test; validation "
              "uses the preset's `valid_beam` and `valid_max_sentences`), mean over seeds."
              + (" Best A2D variant on validation: " + "; ".join(bests) + "." if bests else ""), ""]

    # ---- variants against the cell they vary
    variants = [c for c in grid.cells.values() if c.compare_to and present([c.name])]
    if variants:
        header = ["variant", "vs"]
        for d in dirs:
            header += [f"{d} BLEU", "difference", "p", "valid difference"]
        rows = []
        for cell in variants:
            row = [f"{cell.label} (`{cell.name}`)", f"`{cell.compare_to}`"]
            for d in dirs:  # over the seeds both cells ran, so the differences are paired
                seeds = _matched_seeds(grid, records, d, [cell.name, cell.compare_to])
                recs, base_recs = (_records(grid, records, d, n, seeds) for n in (cell.name, cell.compare_to))
                diffs = [comps[(d, s, cell.compare_to, cell.name)]["delta"] for s in seeds
                         if (d, s, cell.compare_to, cell.name) in comps]
                valid = [_mean([r.get("valid_best_bleu") for r in rs]) for rs in (recs, base_recs)]
                row += [_bleu(_records(grid, records, d, cell.name), len(grid.cell_seeds(cell))),
                        _num(_mean(diffs), "+.2f"),
                        _p(grid, comps, d, cell.compare_to, cell.name, seeds),
                        DASH if None in valid else f"{valid[0] - valid[1]:+.2f}"]
            rows.append(row)
        lines += ["## Variants against the cell they vary", ""] + _table(header, rows) + [
            "", "difference: test BLEU of the variant minus that of the cell it varies (mean over seeds); p: paired "
            "bootstrap of the two (same seed); valid difference: the same on the best validation BLEU. Differences and p "
            "are over the seeds both cells ran; BLEU is the variant's over all its seeds.", ""]

    # ---- validation curves
    for d in dirs:
        curves = []
        for cell in [TEACHER] + [c.name for c in grid.cells.values() if c.main]:
            recs = [r for r in _records(grid, records, d, cell) if r.get("valid_curve")]
            if recs:
                n = min(len(r["valid_curve"]) for r in recs)
                label = "Teacher" if cell == TEACHER else grid.cells[cell].label
                curves.append((label, [_mean([r["valid_curve"][e] for r in recs]) for e in range(n)]))
        if curves:
            n = max(len(c) for _, c in curves)
            rows = [[label] + [_num(c[e]) if e < len(c) else "" for e in range(n)] for label, c in curves]
            lines += [f"## {d}: validation BLEU after each epoch", ""] + _table(
                ["model"] + [f"ep {e + 1}" for e in range(n)], rows) + [""]

    # ---- loss terms of the distilled students
    for d in dirs:
        rows, n = [], 0
        for cell in [c for c in grid.cells.values() if c.main and c.method != "none"]:
            recs = [r for r in _records(grid, records, d, cell.name) if (r.get("loss_terms") or {}).get("ce")]
            if not recs:
                continue
            for key, name in (("ce", "CE"), ("weighted_att", "lambda * L_att"), ("weighted_kd", "mu * KD")):
                if all(key in r["loss_terms"] for r in recs):
                    k = min(len(r["loss_terms"][key]) for r in recs)
                    n = max(n, k)
                    rows.append([f"{cell.label}: {name}"] + [_num(_mean([r["loss_terms"][key][e] for r in recs]))
                                                           for e in range(k)])
        if rows:
            rows = [r + [""] * (n + 1 - len(r)) for r in rows]
            lines += [f"## {d}: training loss terms per epoch", ""] + _table(
                ["term (mean per epoch)"] + [f"ep {e + 1}" for e in range(n)], rows) + [
                "", "Means of the logged training terms over each epoch's logged updates, weights applied "
                "(lambda decays as the cell's schedule says); the loss is their sum.", ""]

    # ---- ablations
    if grid.heads_rows and present([n for row in grid.heads_rows for n in row[1:]]):
        seeds = {d: _matched_seeds(grid, records, d, [n for row in grid.heads_rows for n in row[1:]]) for d in dirs}
        header = ["student heads"]
        for d in dirs:
            header += [f"{d} No KD" + _seeds_note(grid, seeds[d]), f"{d} A2D", "p", "final L_att"]
        rows = []
        for n, nokd_name, a2d_name in grid.heads_rows:
            row = [str(n)]
            for d in dirs:
                a = _records(grid, records, d, a2d_name, seeds[d])
                row += [_bleu(_records(grid, records, d, nokd_name, seeds[d]), len(seeds[d])) if nokd_name else DASH,
                        _bleu(a, len(seeds[d])), _p(grid, comps, d, nokd_name, a2d_name, seeds[d]),
                        _num(_mean([r.get("final_att") for r in a]), ".3f")]
            rows.append(row)
        lines += ["## Table 3: student attention heads", ""] + _table(header, rows) + [
            "", "Test BLEU ± CI half-width; p: paired bootstrap of the A2D student against the No-KD student with "
            "the same heads; final L_att: the last logged attention loss of the A2D run (mean over seeds). "
            + ABLATION_SEEDS, ""]

    if grid.granularity_rows and present([n for _, n in grid.granularity_rows]):
        lines += _ablation_table(grid, records, comps, "## Table 4: head-wise vs layer-wise A2D", "A2D",
                                 grid.granularity_rows)
    if grid.att_kind_rows and present([n for _, n in grid.att_kind_rows]):
        lines += _ablation_table(grid, records, comps, "## Table 5: attention kinds", "attention kinds",
                                 grid.att_kind_rows)

    # ---- alignment
    if alignment:
        lines += ["## Alignment of the best A2D student (chosen on validation)", ""]
        for d in dirs:
            a = alignment.get(d)
            if not a:
                continue
            lines += [f"{d}: `{a['cell']}` seed {a['seed']} (valid BLEU {a['valid_bleu']:.2f})", "",
                      f"![AAM weights {d}]({a['png']})", "", "```", a.get("summary_text", ""), "```", ""]

    # ---- per cell
    header = ["direction", "cell", "seed", "method", "test BLEU", "95% CI", "chrF", "valid BLEU", "final L_att",
              "updates", "train time", "hardware", "commit", "finished"]
    rows = []
    for i in _ordered_ids(grid, records):
        r = records[i]
        rows.append([r["direction"], r["cell"], str(r.get("seed")), r.get("method") or TEACHER, f"{r['bleu']:.2f}",
                     f"{r['bleu_ci'][0]:.2f}-{r['bleu_ci'][1]:.2f}", f"{r['chrf']:.2f}",
                     _num(r.get("valid_best_bleu")), _num(r.get("final_att"), ".3f"), str(r.get("updates") or DASH),
                     _duration(r.get("train_seconds")) + (" (resumed)" if len(r.get("pieces") or []) > 1 else ""),
                     r["hardware"], r["commit"], r["finished"]])
    lines += ["## Every cell", ""] + _table(header, rows) + [
        "", "train time: wall time of training, summed over the pieces of a resumed run (each up to its last "
        "epoch end); the seq-kd cells' teacher translations are timed separately in the JSON.", ""]
    return "\n".join(lines)


def _ablation_table(grid: Grid, records: dict, comps: dict, title: str, first: str, rows_spec) -> list[str]:
    nokd = grid.baselines["nokd"]
    base = grid.ablation_base
    seeds = {d: _matched_seeds(grid, records, d, [name for _, name in rows_spec]) for d in grid.directions}
    header = [first]
    for d in grid.directions:
        header += [f"{d} BLEU" + _seeds_note(grid, seeds[d]), f"p vs `{base}`", "p vs No KD", "valid BLEU",
                   "final L_att"]
    rows = []
    for label, name in rows_spec:
        row = [f"{label} (`{name}`)"]
        for d in grid.directions:
            recs = _records(grid, records, d, name, seeds[d])
            row += [_bleu(recs, len(seeds[d])), _p(grid, comps, d, base, name, seeds[d]),
                    _p(grid, comps, d, nokd, name, seeds[d]), _num(_mean([r.get("valid_best_bleu") for r in recs])),
                    _num(_mean([r.get("final_att") for r in recs]), ".3f")]
        rows.append(row)
    return [title, ""] + _table(header, rows) + ["", ABLATION_SEEDS, ""]


ABLATION_SEEDS = ("Every row of an ablation table is taken over the same seeds: those for which each of its rows that "
                  "has run in that direction has a result (named in the header when not all of the grid's).")


def _matched_seeds(grid: Grid, records: dict, direction: str, names) -> list[int]:
    """The grid's seeds for which every one of ``names`` that has run at all in ``direction`` has a result, so a
    table compares its rows over the same seeds (an ablation often runs on fewer seeds than its base)."""
    ran = [n for n in dict.fromkeys(names) if n and _records(grid, records, direction, n)]
    return [s for s in grid.seeds if all(f"{direction}/{n}-s{s}" in records for n in ran)]


def _seeds_note(grid: Grid, seeds: list[int]) -> str:
    if not seeds or seeds == list(grid.seeds):
        return ""
    return f" (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"


# =============================================================================================== main
def _matches(job: Job, only: list[str] | None) -> bool:
    return not only or any(s in job.id for s in only)


def run_grid(grid: Grid, runs: Path, results: Path, only: list[str] | None, log=print, redo: bool = False) -> None:
    jobs = plan(grid, runs)
    done = {j.id for j in jobs if (j.run / CELL_FILE).is_file()}
    if not redo:  # results in the JSON count as done, also when their run folders are gone
        known, _ = collect(grid, runs, results, log=lambda _msg: None)
        done |= {j.id for j in jobs if j.id in known and run_status(j.run) == "new"}
    selected = [j for j in jobs if _matches(j, only)]
    if only and not selected:
        raise UserError(f"--only {' '.join(only)}: matches none of the {len(jobs)} cells (see --dry-run)")
    for d in grid.directions:
        pending = [j for j in selected if j.direction == d and j.id not in done]
        if not pending:
            continue
        data = ensure_data(grid, runs, d, log, results)
        evaldir = ensure_eval_dir(grid, runs, d)
        teacher = next(j for j in jobs if j.direction == d and j.cell is None)
        needs_teacher = any(j.cell is None or j.cell.needs_teacher for j in pending)
        teacher_path = teacher.run
        if needs_teacher:
            teacher_path = ensure_teacher(grid, runs, results, teacher, data, evaldir, done, log)
        seqkd = None
        if any(j.cell is not None and j.cell.method == "seq-kd" for j in pending):
            seqkd = ensure_seqkd_data(grid, runs, d, data, teacher_path, log)
        for job in pending:
            if job.cell is None:
                continue
            train_job(job, grid, data, teacher_path, seqkd, log)
            evaluate_job(job, grid, evaldir, log)
            done.add(job.id)
            write_report(grid, runs, results, log, figures=False)
    json_path, md_path = write_report(grid, runs, results, log)
    log(f"wrote {json_path} and {md_path}")


def _distilled(record: dict) -> bool:
    method = record.get("method")
    if record.get("role") != "student" or not method:
        return False
    try:
        return method == "seq-kd" or get_method(method).needs_teacher
    except UserError:
        return True  # a method this version does not know: assume it had a teacher


def ensure_teacher(grid: Grid, runs: Path, results: Path, job: Job, data: Path, evaldir: Path, done: set, log) -> Path:
    """The teacher students are distilled from: its run folder (trained and scored first where need be), or,
    when the run is gone, the stored copy of the teacher the results describe. A teacher whose distilled
    students are in the results is never replaced by a newly trained one."""
    if run_status(job.run) != "finished":
        if (job.run / CELL_FILE).is_file():
            raise UserError(f"{job.id}: its cell.json exists but the run {job.run} is not here to distill "
                            "from; copy the teacher's run folder, or remove its cell.json")
        records, _ = collect(grid, runs, results, log=lambda _msg: None)
        record = records.get(job.id)
        if record is not None:
            stored = stored_teacher(grid, results, job.direction, record)
            if stored is not None:
                if grid.continue_from:
                    _check_same_teacher(grid, stored / "config.yaml", job.id)
                log(f"== {job.id}: its run is not here; distilling from the stored teacher {stored} "
                    f"(test BLEU {record['bleu']:.2f})")
                return stored
            if grid.continue_from:
                raise UserError(f"{job.id}: the teacher of grid {grid.continue_from} that this grid continues is "
                                f"neither in {job.run} nor stored in {teacher_store(grid, results, job.direction)}")
            students = sorted(r["id"] for r in records.values() if r["direction"] == job.direction and _distilled(r))
            if students:
                raise UserError(f"{job.id}: {results_paths(grid, results)[0]} holds the teacher that "
                                f"{', '.join(students)} were distilled from, but its run {job.run} is not here and no "
                                f"copy is stored in {teacher_store(grid, results, job.direction)}; a teacher trained "
                                "now would be another one. Copy its run folder back, or run these cells in a grid "
                                "with a new name")
            log(f"   {job.id}: its run is not here and no student was distilled from it yet: training it again "
                "(the new teacher's result replaces the old one)")
            done.discard(job.id)
        elif grid.continue_from:
            raise UserError(f"{job.id}: grid {grid.continue_from}, which this grid continues, has no {job.direction} "
                            f"teacher: neither a finished run {job.run} nor a result in "
                            f"{results / f'quality-{grid.continue_from}.json'}; run that grid's teacher first")
    if grid.continue_from and run_status(job.run) == "finished":
        _check_same_teacher(grid, job.run / "config.yaml", job.id)
    train_job(job, grid, data, job.run, None, log)
    if (job.run / CELL_FILE).is_file():
        record = _read_json(job.run / CELL_FILE)
    else:
        record = evaluate_job(job, grid, evaldir, log)
        done.add(job.id)
        write_report(grid, runs, results, log, figures=False)
    if grid.store_teachers:
        store_teacher(grid, results, job, record, log)
    return job.run


def _config_differences(config_file: Path, want: dict) -> list[str]:
    """The settings of ``want`` that the run's saved config.yaml holds with another value (keys it lacks: skipped)."""
    try:
        had = read_yaml(config_file)
    except ConfigError as e:
        raise UserError(str(e)) from None
    return [f"{k}={had[k]!r} (not {want[k]!r})" for k in want if k in had and had[k] != want[k]]


def _check_same_teacher(grid: Grid, config_file: Path, what: str) -> None:
    """A grid that continues another distils from that grid's teacher: its own teacher settings must be the same."""
    if config_file.is_file():
        differ = _config_differences(config_file, grid.teacher_config().to_dict())
        if differ:
            raise UserError(f"{grid.path}: teacher: the teacher of grid {grid.continue_from} ({what}) was trained with "
                            f"{', '.join(differ)}; give this grid the same teacher settings")


def dry_run(grid: Grid, runs: Path, results: Path, only: list[str] | None, log=print, redo: bool = False) -> None:
    known, _ = collect(grid, runs, results, log)
    jobs = plan(grid, runs)
    todo = 0
    for d in grid.directions:
        log(f"{d}: data {data_dir(grid, runs, d)} " + ("(prepared)" if (data_dir(grid, runs, d) / 'meta.json').is_file()
                                                       else "(to prepare)"))
        if any(j.cell is not None and j.cell.method == "seq-kd" for j in jobs if j.direction == d):
            s = seqkd_dir(grid, runs, d)
            log(f"{d}: seq-kd data {s} " + ("(written)" if (s / 'meta.json').is_file() else "(to write)"))
    for job in jobs:
        if not _matches(job, only):
            continue
        status = run_status(job.run)
        rec = known.get(job.id)
        local = (job.run / CELL_FILE).is_file()
        if local or (rec is not None and not redo and status == "new"):
            state = f"done: test BLEU {rec['bleu']:.2f}"
            if not local and job.cell is None:
                stored = (teacher_store(grid, results, job.direction) / MANIFEST).is_file()
                state += " (stored copy)" if stored else " (run not here)"
            elif not local:
                state += " (in the JSON)"
            wanted = None if job.cell is None else job.cell.overrides + [f"seed={job.seed}"]
            if wanted and rec.get("overrides") and rec["overrides"] != wanted:
                state += " [other overrides than the grid's now]"
        else:
            todo += 1
            state = {"finished": "trained, to score", "started": "started, to resume", "broken": "to restart",
                     "new": "to train"}[status]
            if status == "new" and job.cell is not None and grid.continue_from and continuable(job, grid)[0]:
                state = f"to continue {grid.continue_from}'s run"
            if rec is not None:
                state += " (replaces a result in the JSON)"
        
        what = "teacher " + grid.teacher_preset if job.cell is None else \
            f"{job.cell.method} {job.cell.preset} {' '.join(job.cell.overrides)}".rstrip()
        log(f"  {job.id:<40} {state:<48} {what}")
    log(f"{todo} cell(s) to run" + (f" (of those matching --only {' '.join(only)})" if only else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", type=Path, help="the grid YAML file (see the top of this script)")
    parser.add_argument("--only", nargs="+", metavar="SUBSTRING",
                        help="run only the cells whose id (DIRECTION/CELL-sSEED or DIRECTION/teacher) contains one of "
                             "these; a teacher that selected students need is trained too")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS,
                        help="where data and runs go (default %(default)s)")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS,
                        help="where quality-<name>.{json,md} go (default benchmarks/results)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="print the planned cells and which are done")
    mode.add_argument("--report-only", action="store_true", help="rebuild the JSON and markdown, train nothing")
    parser.add_argument("--redo", action="store_true",
                        help="train the selected cells again although their results are in the JSON (a cell whose run "
                             "folder holds cell.json is still skipped: remove the run folder to redo it)")
    args = parser.parse_args(argv)
    try:
        grid = load_grid(args.grid)
        if args.dry_run:
            dry_run(grid, args.runs_dir, args.results_dir, args.only, redo=args.redo)
        elif args.report_only:
            json_path, md_path = write_report(grid, args.runs_dir, args.results_dir, print)
            print(f"wrote {json_path} and {md_path}")
        else:
            run_grid(grid, args.runs_dir, args.results_dir, args.only, redo=args.redo)
    except (UserError, ConfigError) as e:
        print(f"quality: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("quality: interrupted (run the same command again to continue)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

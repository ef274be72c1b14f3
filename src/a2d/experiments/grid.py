"""Grid files: what a quality benchmark trains, read into dataclasses and checked before any work.

A grid file is YAML; every key but ``name``, ``teacher``, ``student_preset`` and ``methods`` is optional::

    name: tiny                       # -> RESULTS/quality-tiny.{json,md}, runs under RUNS/tiny/
    corpus: multi30k                 # a corpus `a2d prepare --corpus` knows
    directions: [de-en, en-de]       # src-tgt
    vocab_size: 8000                 # joint SentencePiece vocabulary of each direction's data
    max_train: null                  # keep the first N training pairs (null: all)
    test_max_sentences: null         # score only the first N test sentences (smoke tests; null: all)
    beam: 5                          # beam of the test translations
    seq_kd_beam: 5                   # beam of the teacher's translations for the cells that train on them
    seq_kd_engine: hf                # what decodes them: hf, ct2-float32 or ct2-int8 (CTranslate2, all cores)
    bootstrap_samples: 1000          # resamples of the paired bootstrap test
    store_teachers: false            # keep each teacher's weights in RESULTS/quality-<name>-teachers/, and
                                     # each student's in RESULTS/quality-<name>-students/
    teacher_dtype: float32           # float16: round the trained teacher to float16 before it is scored, distilled
                                     # from and stored (half the size; the stored copy is the same model)
    continue_from: null              # another grid's name: use its data and its teacher (run folder or stored
                                     # copy; the teacher settings must match), and start each student from that
                                     # grid's finished run of the same cell and seed when only max_epochs differs
                                     # (smaller there): the same student as trained from the start, sooner
    seeds: [1]                       # every student cell runs once per seed (override seed=S)
    teacher: {preset: tiny-teacher, overrides: [max_epochs=20]}   # one teacher per direction
    student_preset: tiny-student     # preset of every student cell (a cell may set its own `preset`)
    student_overrides: [max_epochs=15]                            # before each cell's own overrides (a method's
                                     # own settings, such as lambda_att, go in its cells' overrides)
    baselines: {nokd: nokd, kd: kd}  # the cells the paired tests compare against (these are the defaults;
                                     # without them: the first cell whose method is that baseline)
    methods:                         # Table 1 rows after the teacher, in this order
      nokd: {method: none}           # cell name -> method (`a2d methods`), optional overrides, preset, label
      kd: {method: kd}
      seq-kd: {method: seq-kd}       # the runner writes the teacher's distilled data itself
      a2d: {method: a2d, label: "A2D (per-query KL, convex AAM)"}
      a2d-reference: {method: a2d, overrides: [kl_norm=reference, aam=linear], compare_to: a2d}
                                     # compare_to: also paired-test this cell against that one ("Variants" table)
      a2d-t2: {method: a2d, overrides: [kd_temperature=2], compare_to: a2d, seeds: [1]}
                                     # seeds: run for some of the grid's seeds only (default: all of them)
      kd-top8: {method: kd, kd_cache_topk: 8, compare_to: kd}
                                     # kd_cache_topk: read the KD term from a cache of the teacher's top K at the
                                     #   cell's kd_temperature (the runner builds it: RUNS/<name>/<dir>/kd-cache-...)
      a2d-cached: {method: a2d, kd_cache_topk: 8, kd_cache_attention: true, compare_to: a2d}
                                     # kd_cache_attention: the cache holds the teacher's attention maps too, and
                                     #   A2D trains without running the teacher
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
``methods: {a2d-layerwise: ...}`` is Table 4's layer-wise row).

Each section is a dataclass whose fields carry their help text and range, like :class:`a2d.config.Config`;
:func:`read_spec` checks a mapping against one (unknown keys, missing keys, types, ranges, choices), and its
errors name the file and the key. :func:`load_grid` then resolves the specs into a :class:`Grid`: the cells,
the baselines, the ablation rows, and every cell's configuration, so that a bad override fails at once.
"""
from __future__ import annotations

import copy
import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from a2d.config import ConfigError, read_yaml
from a2d.data.corpus import CORPORA
from a2d.losses import ATT_KINDS
from a2d.methods import CACHE_READERS, UnknownMethod, get_method
from a2d.settings import load_config
from a2d.utils import UserError

TEACHER = "teacher"  # the teacher's cell name (RUNS/<name>/<dir>/teacher)
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
BASELINES = ("nokd", "kd")  # the roles of the paired tests' baselines (DistillMethod.baseline)
SEQ_KD_ENGINES = ("hf", "ct2-float32", "ct2-int8")  # a2d.recipes.distill_data.ENGINES (not imported: grids load light)


def _key(default=dataclasses.MISSING, help: str = "", low: int | None = None, choices: tuple | None = None,
         expected: str | None = None):
    """A grid key: its default (none: required), help text, lower bound, choices, and what an error says it expects."""
    factory = dataclasses.MISSING
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):  # each instance its own copy
        default, factory = dataclasses.MISSING, (lambda value=default: copy.deepcopy(value))
    return field(default=default, default_factory=factory,
                 metadata={"help": help, "low": low, "choices": choices, "expected": expected})


# =============================================================================================== the file
@dataclass
class TeacherSpec:
    preset: str = _key(help="preset of the teacher (one per direction)")
    overrides: list[str] = _key([], "key=value settings over the preset", expected="a list of key=value strings")


@dataclass
class CellSpec:
    method: str = _key(help="a method of `a2d methods`")
    overrides: list[str] = _key([], "key=value settings after student_overrides", expected="a list of key=value strings")
    preset: str | None = _key(None, "the cell's own preset (default: student_preset)")
    label: str | None = _key(None, "its row name in the tables (default: the method's label)")
    compare_to: str | None = _key(None, "another cell this one varies: paired-tested against it too")
    seeds: list[int] | None = _key(None, "some of the grid's seeds to run it for (default: all)")
    kd_cache_topk: int | None = _key(None, "train from a cache of the teacher's top-K log-probabilities (a2d "
                                     "distill-data --cache-topk K), built once per direction, K and kd_temperature",
                                     low=1)
    kd_cache_attention: bool = _key(False, "the cache holds the teacher's attention maps too (a2d distill-data "
                                    "--cache-attention): A2D then trains without running the teacher")


@dataclass
class BaselinesSpec:
    nokd: str | None = _key(None, "the No-KD cell (default: the cell named nokd, or the first No-KD cell)")
    kd: str | None = _key(None, "the vanilla-KD cell (default: the cell named kd, or the first KD cell)")


@dataclass
class AblationSpec:
    base: str = _key("a2d", "the A2D cell the ablations vary")
    heads: list[int] = _key([], "Table 3: student attention heads", low=1, expected="a list of positive integers")
    granularity: bool = _key(False, "Table 4: head-wise vs layer-wise A2D")
    att_kinds: list[str] = _key([], "Table 5: attention kinds", choices=ATT_KINDS)
    seeds: list[int] | None = _key(None, "some of the grid's seeds to run the generated cells for (default: all)")


@dataclass
class GridSpec:
    name: str = _key(help="the grid's name: RESULTS/quality-<name>.{json,md}, RUNS/<name>/")
    teacher: TeacherSpec = _key(help="the teacher of each direction",
                                expected="{preset: NAME, overrides: [key=value, ...]}")
    student_preset: str = _key(help="preset of every student cell")
    methods: dict[str, CellSpec] = _key(help="Table 1 rows after the teacher: cell name -> {method: NAME, ...}",
                                        expected="a mapping of cell name -> {method: NAME, ...}")
    corpus: str = _key("multi30k", "a corpus `a2d prepare --corpus` knows")
    directions: list[str] = _key(["de-en"], "src-tgt pairs", expected="a list like [de-en, en-de]")
    vocab_size: int = _key(8000, "joint SentencePiece vocabulary of each direction's data", low=5)
    max_train: int | None = _key(None, "keep the first N training pairs (null: all)", low=1)
    test_max_sentences: int | None = _key(None, "score only the first N test sentences (null: all)", low=1)
    beam: int = _key(5, "beam of the test translations", low=1)
    seq_kd_beam: int = _key(5, "beam of the teacher's translations that generated-data cells train on", low=1)
    seq_kd_engine: str = _key("hf", "what decodes the teacher's translations (a2d distill-data --engine)",
                              choices=SEQ_KD_ENGINES)
    bootstrap_samples: int = _key(1000, "resamples of the paired bootstrap test", low=2)
    store_teachers: bool = _key(False, "keep each teacher's and each cell's best student's weights beside the results")
    teacher_dtype: str = _key("float32", "float16: the teacher is its trained weights rounded to float16 (before it is "
                              "scored and distilled from), and its stored copy takes half the space",
                              choices=("float32", "float16"))
    continue_from: str | None = _key(None, "another grid: its data, its teacher, and its shorter runs to go on from")
    seeds: list[int] = _key([1], "every student cell runs once per seed", expected="a list of integers")
    student_overrides: list[str] = _key([], "key=value settings of every student cell (a method's own: in its cells)",
                                        expected="a list of key=value strings")
    baselines: BaselinesSpec = _key(BaselinesSpec(), "the cells the paired tests compare against",
                                    expected="{nokd: CELL, kd: CELL}")
    ablations: AblationSpec | None = _key(None, "extra cells that vary the base A2D cell")


def _expected(f: dataclasses.Field, default: str) -> str:
    return f.metadata.get("expected") or default


def _check(typ, value, where: str, f: dataclasses.Field):
    """``value`` as a value of ``typ`` (from the field's annotation), or a UserError naming ``where``."""
    meta = f.metadata
    if typing.get_origin(typ) in (typing.Union, types.UnionType):  # X | None
        if value is None:
            return None
        return _check(next(a for a in typing.get_args(typ) if a is not type(None)), value, where, f)
    if dataclasses.is_dataclass(typ):
        if value is None and f.default_factory is not dataclasses.MISSING:  # `baselines: null`: the defaults
            return f.default_factory()
        return read_spec(typ, value, where, expected=meta.get("expected"))
    origin = typing.get_origin(typ)
    if origin is dict:
        if not isinstance(value, dict) or not value:
            raise UserError(f"{where}: expected {_expected(f, 'a mapping')}")
        item = typing.get_args(typ)[1]
        return {str(k): read_spec(item, v, f"{where}: {k}", expected="{method: NAME, overrides: [...]}")
                for k, v in value.items()}
    if origin is list:
        item = typing.get_args(typ)[0]
        if item is int:
            ok = isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                 and (meta["low"] is None or v >= meta["low"]) for v in value)
        else:
            ok = isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                                 for v in value)
            ok = ok and (meta["choices"] is None or all(v in meta["choices"] for v in value))
        if not ok:
            if meta["choices"]:
                raise UserError(f"{where}: choose from {', '.join(meta['choices'])}")
            raise UserError(f"{where}: expected {_expected(f, 'a list of ' + item.__name__ + 's')}")
        return [v if item is int else str(v) for v in value]
    if typ is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, got {value!r}")
        return value
    if typ is int:
        optional = f.default is None
        if not isinstance(value, int) or isinstance(value, bool) or (meta["low"] is not None and value < meta["low"]):
            raise UserError(f"{where}: expected an integer >= {meta['low']}" + (" or null" if optional else "")
                            + f", got {value!r}")
        return value
    if typ is str:  # as in a2d.config: a number written where a name is meant is that name
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise UserError(f"{where}: expected a name, got {value!r}")
        if meta["choices"] and str(value) not in meta["choices"]:
            raise UserError(f"{where}: choose from {', '.join(meta['choices'])}, got {value!r}")
        return str(value)
    raise TypeError(f"{where}: no reader for {typ!r}")


def read_spec(cls, raw, where: str, expected: str | None = None):
    """A ``cls`` dataclass from the mapping ``raw``: unknown or missing keys and wrong values raise a
    UserError that names ``where`` (the file, and the section) and the key."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected {expected or 'a mapping with keys ' + ', '.join(known)}")
    unknown = sorted(set(map(str, raw)) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in known.items():
        if name in raw:
            values[name] = _check(hints[name], raw[name], f"{where}: {name}", f)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise UserError(f"{where}: missing key {name!r}")
    return cls(**values)


# =============================================================================================== resolved
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
    kd_cache_topk: int | None = None  # reads its KD term from a cache of the teacher's top K (None: live teacher)
    kd_cache_attention: bool = False  # and the teacher's attention maps from it

    @property
    def method_class(self):
        """The method's class: its label, whether it needs a teacher or generated data, which baseline it is."""
        return get_method(self.method)

    @property
    def needs_teacher(self) -> bool:
        """A teacher goes into it: at training time, or through the teacher's translations it trains on."""
        return self.method_class.needs_teacher or self.method_class.generated_data


@dataclass
class Grid(GridSpec):
    """A grid file resolved: the specs, plus the cells (Table 1's and the ablations'), the baselines and rows."""

    path: Path | None = None
    raw: dict = field(default_factory=dict)
    cells: dict[str, Cell] = field(default_factory=dict)
    heads_rows: list[tuple[int, str | None, str]] = field(default_factory=list)  # (N, nokd cell, A2D cell)
    granularity_rows: list[tuple[str, str]] = field(default_factory=list)  # (label, cell)
    att_kind_rows: list[tuple[str, str]] = field(default_factory=list)  # (kind, cell)
    ablation_base: str | None = None  # the A2D cell the ablations vary

    @property
    def teacher_preset(self) -> str:
        return self.teacher.preset

    @property
    def teacher_overrides(self) -> list[str]:
        return self.teacher.overrides

    @property
    def teacher_grid(self) -> str:
        """The grid whose teacher this one distils from (itself, or the grid it continues)."""
        return self.continue_from or self.name

    def baseline(self, role: str) -> str | None:
        """The cell of the paired tests' baseline ``role`` (``nokd`` or ``kd``), or None."""
        return getattr(self.baselines, role)

    def teacher_config(self):
        return load_config(self.teacher_preset, self.teacher_overrides, train=True)

    def cell_seeds(self, cell: Cell) -> list[int]:
        return self.seeds if cell.seeds is None else cell.seeds

    def cell_config(self, cell: Cell, seed: int, kd_cache: Path | None = None):
        """The cell's settings for ``seed``; ``kd_cache``: the folder of the teacher cache it reads (the runner
        builds it; a cell with ``kd_cache_topk`` is only trained with one)."""
        extra = [] if kd_cache is None else [f"kd_cache={kd_cache}"]
        return load_config(cell.preset, cell.overrides + [f"seed={seed}", f"method={cell.method}"] + extra)


def _some_seeds(value, seeds: list[int], where: str) -> list[int] | None:
    """A cell's own seeds: None (the grid's), or some of the grid's, each once (the paired tests need the baselines'
    runs of the same seeds)."""
    if value is None:
        return None
    if not value or len(set(value)) != len(value) or any(s not in seeds for s in value):
        raise UserError(f"{where}: expected a list of some of the grid's seeds ({', '.join(map(str, seeds))}), each once")
    return list(value)


def load_grid(path: Path | str) -> Grid:
    """Read and check a grid file: unknown keys, methods, presets and every override fail here, before any work."""
    path = Path(path)
    try:
        raw = read_yaml(path)
    except ConfigError as e:
        raise UserError(str(e)) from None
    spec = read_spec(GridSpec, raw, str(path))
    grid = Grid(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(GridSpec)}, path=path, raw=raw)
    if not NAME_RE.match(grid.name):
        raise UserError(f"{path}: name {grid.name!r}: use lower-case letters, digits, '.', '_', '-'")
    if grid.continue_from is not None and (not NAME_RE.match(grid.continue_from) or grid.continue_from == grid.name):
        raise UserError(f"{path}: continue_from: expected the name of another grid, got {grid.continue_from!r}")
    if not grid.directions:
        raise UserError(f"{path}: directions: expected a list like [de-en, en-de]")
    if grid.corpus not in CORPORA:
        raise UserError(f"{path}: corpus: unknown corpus {grid.corpus!r} (choose from {', '.join(sorted(CORPORA))})")
    languages = CORPORA[grid.corpus].languages
    for d in grid.directions:
        parts = d.split("-")
        if len(parts) != 2:
            raise UserError(f"{path}: direction {d!r}: write it src-tgt, e.g. de-en")
        unknown = [lang for lang in parts if lang not in languages]
        if unknown:
            raise UserError(f"{path}: direction {d!r}: {grid.corpus} has no language {unknown[0]!r} "
                            f"(choose from {', '.join(languages)})")
        if parts[0] == parts[1]:
            raise UserError(f"{path}: direction {d!r}: source and target languages must differ")
    if len(set(grid.directions)) != len(grid.directions):
        raise UserError(f"{path}: directions: listed twice")
    if not grid.seeds:
        raise UserError(f"{path}: seeds: expected a list of integers")
    if len(set(grid.seeds)) != len(grid.seeds):
        raise UserError(f"{path}: seeds: listed twice")
    _add_cells(grid)
    _add_ablations(grid)

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


def _add_cells(grid: Grid) -> None:
    """The Table 1 cells of ``methods``, and the baselines the paired tests compare them against."""
    where = f"{grid.path}: methods"
    for cname, spec in grid.methods.items():
        if not NAME_RE.match(cname) or cname == TEACHER or cname.startswith("seqkd-data"):
            raise UserError(f"{where}: cell name {cname!r}: use lower-case letters, digits, '.', '_', '-' "
                            f"(not {TEACHER!r})")
        try:
            method = get_method(spec.method)
        except UnknownMethod as e:  # the cell's, not an option's: name the file and the cell
            raise UserError(f"{where}: {cname}: method: unknown method {e.name!r} (choose from "
                            f"{', '.join(e.choices)})") from None
        label = spec.label
        if label is None:  # "No KD" for a cell named nokd, "No KD [nokd-long]" for another one
            label = (method.label or method.name) + ("" if cname == (method.baseline or method.name) else f" [{cname}]")
        if spec.kd_cache_topk is not None and not method.reads_kd_cache:
            raise UserError(f"{where}: {cname}: kd_cache_topk: method {spec.method} does not read a teacher cache "
                            f"(those that do: {', '.join(CACHE_READERS)})")
        if spec.kd_cache_attention and spec.kd_cache_topk is None:
            raise UserError(f"{where}: {cname}: kd_cache_attention: a cache needs kd_cache_topk: K too")
        if spec.kd_cache_attention and not method.reads_cached_maps:
            raise UserError(f"{where}: {cname}: kd_cache_attention: method {spec.method} reads no attention maps from "
                            "a teacher cache (a2d does)")
        if any(o.split("=", 1)[0].strip() == "kd_cache" for o in grid.student_overrides + spec.overrides):
            raise UserError(f"{where}: {cname}: overrides: kd_cache: the runner builds the cache; use kd_cache_topk: K")
        grid.cells[cname] = Cell(cname, spec.method, spec.preset or grid.student_preset,
                                 grid.student_overrides + spec.overrides, label, compare_to=spec.compare_to,
                                 seeds=_some_seeds(spec.seeds, grid.seeds, f"{where}: {cname}: seeds"),
                                 kd_cache_topk=spec.kd_cache_topk, kd_cache_attention=spec.kd_cache_attention)
    for cell in grid.cells.values():
        if cell.compare_to is not None and (cell.compare_to not in grid.cells or cell.compare_to == cell.name):
            raise UserError(f"{where}: {cell.name}: compare_to {cell.compare_to!r}: not another cell of methods")
    for role in BASELINES:
        chosen = grid.baseline(role)
        if chosen is None:
            chosen = role if role in grid.cells else \
                next((c.name for c in grid.cells.values() if c.method_class.baseline == role), None)
        elif chosen not in grid.cells:
            raise UserError(f"{grid.path}: baselines: {role}: no cell {chosen!r} in methods")
        setattr(grid.baselines, role, chosen)


def _add_ablations(grid: Grid) -> None:
    spec = grid.ablations
    if not grid.raw.get("ablations"):  # absent, null or {}
        return
    where = f"{grid.path}: ablations"
    base = grid.cells.get(spec.base)
    if base is None or base.method != "a2d":  # the generated cells are cells of method a2d
        raise UserError(f"{where}: base {spec.base!r}: must be a cell of method a2d in methods")
    nokd = grid.cells.get(grid.baselines.nokd) if grid.baselines.nokd else None
    grid.ablation_base = base.name
    seeds = _some_seeds(spec.seeds, grid.seeds, f"{where}: seeds")

    def add(name: str, like: Cell, method: str, extra: list[str], label: str, compare: bool = False) -> str:
        if name not in grid.cells:  # a cell the grid defines itself is used as it is
            grid.cells[name] = Cell(name, method, like.preset, like.overrides + extra, label, main=False,
                                    compare_to=like.name if compare else None, seeds=seeds,
                                    kd_cache_topk=like.kd_cache_topk, kd_cache_attention=like.kd_cache_attention)
        return name

    try:
        base_cfg = grid.cell_config(base, grid.seeds[0])
    except ConfigError as e:
        raise UserError(f"{grid.path}: cell {base.name}: {e}") from None
    own = (base_cfg.encoder_attention_heads, base_cfg.decoder_attention_heads)
    for n in spec.heads:
        extra = [f"encoder_attention_heads={n}", f"decoder_attention_heads={n}"]
        a2d_name = base.name if own == (n, n) else add(f"{base.name}-heads-{n}", base, "a2d", extra, f"A2D, {n} heads")
        nokd_name = None
        if nokd is not None:
            nokd_name = nokd.name if own == (n, n) else add(f"{nokd.name}-heads-{n}", nokd, nokd.method, extra,
                                                            f"No KD, {n} heads")
        grid.heads_rows.append((n, nokd_name, a2d_name))

    if spec.granularity:
        layer = add(f"{base.name}-layerwise", base, "a2d", ["att_granularity=layer"], "A2D (layer-wise)", compare=True)
        grid.granularity_rows = [("head-wise", base.name), ("layer-wise", layer)]

    for kind in spec.att_kinds:
        name = base.name if kind == base_cfg.settings.att_kinds else add(f"{base.name}-att-{kind}", base, "a2d",
                                                               [f"att_kinds={kind}"], f"A2D, {kind}", compare=True)
        grid.att_kind_rows.append((kind, name))


__all__ = ["Grid", "GridSpec", "TeacherSpec", "CellSpec", "BaselinesSpec", "AblationSpec", "Cell", "load_grid",
           "read_spec", "TEACHER", "NAME_RE", "ATT_KINDS"]

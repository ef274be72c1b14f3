"""The errors components raise about their caller's input: :class:`UserError`, and typed ones that carry the data
their message needs.

Their own text is neutral (a Python caller of :func:`a2d.recipes.distill.distill` reads ``resume=True``, not
``--resume``); the command line words them with its options (:func:`a2d.cli._message`). Light to import, and
imports no other a2d module.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePath


class UserError(Exception):
    """A mistake in the user's input: the CLI prints its message on one line and exits with status 2."""


class OutputUnwritable(UserError):
    """The output ``path`` cannot be written; ``problem`` says why (a folder where a file goes, a file above it, a
    folder that refuses writes)."""

    def __init__(self, path: Path | str, problem: str):
        self.path, self.problem = Path(path), problem
        super().__init__(f"{self.path}: {problem}")


class OutputExists(UserError):
    """``path``, where an output goes, is taken: ``what`` says by what. Besides choosing another place, a caller may
    ``resume`` the run folder it holds (when True), or have the writer ``overwrite`` it (the text says what that
    does), or else remove it."""

    def __init__(self, path: Path | str, what: str = "already exists", resume: bool = False,
                 overwrite: str | None = None):
        self.path, self.what, self.resume, self.overwrite = Path(path), what, resume, overwrite
        super().__init__(f"{self.path}: {what}; {self.remedy('resume=True continues it', 'overwrite=True', 'folder')}")

    def remedy(self, resume: str, overwrite: str, another: str) -> str:
        """The ways out, in the caller's words: how to resume, the switch that overwrites, another output place."""
        if self.resume:
            return f"{resume}, or choose another {another}"
        if self.overwrite:
            return f"choose another {another}, or give {overwrite} to {self.overwrite}"
        return f"remove it or choose another {another}"


class CannotCreate(UserError):
    """The output folder ``path`` cannot be made; ``reason`` is the system's."""

    def __init__(self, path: Path | str, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{self.path}: cannot create ({reason})")


class NothingToResume(UserError):
    """A run folder asked to resume holds no checkpoint, but files (``found``: their names) that are not a run's
    beginning."""

    def __init__(self, path: Path | str, found):
        self.path, self.found = Path(path), sorted(found)
        super().__init__(f"{self.path} has no last/ checkpoint to resume from (found {', '.join(self.found)}); "
                         "choose another folder")


class ResumeMismatch(UserError):
    """A run cannot be resumed as asked: ``changed`` settings (``(key, wanted, saved)``) that fix its shape differ
    from its ``config_file``, or the data's vocabulary is not the one of its checkpoint (``vocabulary``, the
    checkpoint's folder)."""

    def __init__(self, path: Path | str, config_file: Path | str, changed=(), vocabulary: Path | str | None = None):
        self.path, self.config_file, self.changed = Path(path), Path(config_file), list(changed)
        self.vocabulary = Path(vocabulary) if vocabulary is not None else None
        super().__init__(f"{self.path}: {self.describe('the data', 'in another folder')}")

    def describe(self, data: str, elsewhere: str) -> str:
        """What differs, naming the data as ``data`` and a new run's place as ``elsewhere``."""
        if self.vocabulary is not None:
            return (f"{data} has another vocabulary than the run was trained with ({self.vocabulary}); give the "
                    "run's own data directory")
        changed = ", ".join(f"{k}={wanted!r} (the run has {saved!r})" for k, wanted, saved in self.changed)
        return (f"{changed} differs from {self.config_file}; the checkpoint cannot take it (drop the override, or "
                f"start a new run {elsewhere})")


class NotAnAlignmentRun(UserError):
    """``run_dir`` lacks the files an A2D run saves beside its student; ``missing`` are their paths."""

    def __init__(self, run_dir: Path, missing: list[str]):
        self.run_dir, self.missing = run_dir, list(missing)
        super().__init__(f"{run_dir}: not an A2D run, missing {' and '.join(self.missing)}")


class UnknownMethod(UserError):
    """``name`` is not a key of :data:`a2d.methods.METHODS`; ``choices`` are the names that are, sorted."""

    def __init__(self, name: str, choices):
        self.name, self.choices = name, tuple(choices)
        super().__init__(f"unknown method {name!r} (choose from {', '.join(self.choices)})")


class TeacherRequired(UserError):
    """A method that learns from a teacher was built without one; ``method`` is its name."""

    def __init__(self, method: str):
        super().__init__(f"method {method} needs a teacher")
        self.method = method


class NotDistilledData(UserError):
    """A data directory without the teacher's translations (no ``distilled_from`` in its ``meta.json``).

    ``method`` is the method that needs them, ``data_dir`` the directory (None when not known).
    """

    def __init__(self, method: str, data_dir=None):
        self.method, self.data_dir = method, data_dir
        where = f"{data_dir} is" if data_dir is not None else "the data directory is"
        super().__init__(f"method {method} trains on the teacher's translations, but {where} not a distilled one "
                         "(no distilled_from in meta.json; the distill-data recipe writes one)")


class BadValue(UserError):
    """The value a parameter was given is refused; ``problem`` says why.

    ``option`` is the parameter's name as a Python caller spells it (``"beam"``, ``"data_dir"``; where that name says
    little, what the value is: ``"corpus"`` for :func:`a2d.data.corpus.locate_corpus`'s ``name``), ``value`` its value
    (None: not given); or ``option`` is a tuple of names refused together, and ``value`` the tuple of their values.
    ``problem`` may name other parameters as ``{name}`` (a hint: ``"raise {max_tokens}"``), with a value where
    ``values`` holds one (``{max_len}`` with ``max_len=249``). :meth:`describe` words every parameter; the neutral
    text writes them as a call does, ``name=value``; the command line as its options (:func:`a2d.cli._message`).
    """

    def __init__(self, option: str | tuple, value, problem: str, /, **values):
        self.option, self.value, self.problem, self.values = option, value, problem, values
        super().__init__(self.describe(_keyword))

    @property
    def options(self) -> tuple[str, ...]:
        """The refused parameters' names."""
        return self.option if isinstance(self.option, tuple) else (self.option,)

    def describe(self, name, sep: str = ", ") -> str:
        """The message, each parameter worded by ``name(option)`` or, with its value, ``name(option, value)``; the
        refused ones joined by ``sep``."""
        given = self.value if isinstance(self.option, tuple) else (self.value,)
        head = sep.join(name(o) if v is None else name(o, v) for o, v in zip(self.options, given))
        problem = _PARAMETER.sub(lambda m: name(m[1], self.values[m[1]]) if m[1] in self.values else name(m[1]),
                                 self.problem)
        return f"{head}: {problem}"


#: A parameter named in a :class:`BadValue`'s problem: ``{name}``.
_PARAMETER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")


def _keyword(option: str, *value) -> str:
    """A parameter as a Python call writes it: ``name``, or ``name=value`` (a path as its text, quoted)."""
    if not value:
        return option
    shown = str(value[0]) if isinstance(value[0], PurePath) else value[0]
    return f"{option}={shown!r}"


__all__ = ["UserError", "OutputUnwritable", "OutputExists", "CannotCreate", "NothingToResume", "ResumeMismatch",
           "NotAnAlignmentRun", "UnknownMethod", "TeacherRequired", "NotDistilledData", "BadValue"]

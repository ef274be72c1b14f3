"""A run's settings: the common :class:`~a2d.config.Config` and the chosen method's own settings.

:mod:`a2d.config` knows the settings every run has and reads the layers (defaults < saved config < presets <
``key=value``); each method declares its own settings beside it (its ``Settings`` dataclass). This module sits
above both: it picks the run's method, gives each key to the settings that own it, and builds the config with
the method's settings object (``cfg.settings``), which is what the method is built with.

A key is a common setting, a setting of the run's method, or an error: a key of another method names the
method(s) that own it (``override: lambda_att: a setting of methods a2d, a2d-layerwise, not of kd``), an
unknown key says so. A run's saved ``config.yaml`` may hold keys of other methods (older versions saved every
method's settings flat); those are the one exception, skipped, as the run never used them. A YAML file's
section ``NAME: {key: value}`` holds settings of method NAME, applied to runs of NAME only (and checked always).
"""
from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from a2d.config import DISTILL_KEYS, FIELDS, Config, ConfigError, Given, coerce, describe_fields, read_layers
from a2d.methods import METHODS, MethodSettings

TRAIN = "a2d train"  # what the errors call a run without a method


#: Keys that other tools' configs use for a setting of ours (Marian's YAML: ``activation``).
ALIASES = {"activation": "activation_function"}


def _did_you_mean(key: str) -> str:
    """``; did you mean X?`` for a key that is another tool's name for X or a near-miss of a key, else nothing."""
    known = list(FIELDS) + sorted({f.name for cls in METHODS.values() for f in dataclasses.fields(cls.Settings)})
    guess = ALIASES.get(key) or next(iter(difflib.get_close_matches(key, known, n=1, cutoff=0.75)), None)
    return f"; did you mean {guess}?" if guess else ""


def owners(key: str) -> list[str]:
    """The methods whose settings include ``key``, in :data:`~a2d.methods.METHODS`' order."""
    return [name for name, cls in METHODS.items() if key in _fields(cls.Settings)]


def _fields(settings_cls: type[MethodSettings]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(settings_cls)}


def _run_method(given: list[Given]) -> str:
    """The method the layers name last (``method=``), else the config's default; an unknown one is an error."""
    method = Config.method
    for g in given:
        if g.key == "method" and g.section is None:
            method = coerce(FIELDS["method"], g.value, g.source)
    if method not in METHODS:
        raise ConfigError(f"method={method!r}: unknown method (choose from {', '.join(sorted(METHODS))})")
    return method


def _section_value(g: Given):
    """A value of a YAML section ``NAME: {key: value}``: checked against method NAME's settings, wherever used."""
    if g.section not in METHODS:
        raise ConfigError(f"{g.source}: unknown key {g.section!r} (a mapping there is a method's settings, "
                          f"under its name: one of {', '.join(METHODS)})")
    own = _fields(METHODS[g.section].Settings)
    if g.key not in own:
        held = owners(g.key)
        raise ConfigError(f"{g.where}: not a setting of method {g.section}"
                          + (f" (a setting of {_methods(held)})" if held else " (see `a2d config --keys`)"))
    return coerce(own[g.key], g.value, g.where)


def _methods(names: list[str]) -> str:
    return ("method " if len(names) == 1 else "methods ") + ", ".join(names)


def _not_owned(g: Given, method: str | None) -> ConfigError:
    """The error for a key of other methods than the run's (``method``; None: a train run)."""
    held = _methods(owners(g.key))
    if method is None:
        return ConfigError(f"{g.where}: a setting of {held}; {TRAIN} has no method (a2d distill --method)")
    hint = (f"; in a YAML file, put it under a section `{owners(g.key)[0]}:` to keep it for that method's runs"
            if g.source.endswith((".yaml", ".yml")) else "")
    return ConfigError(f"{g.where}: a setting of {held}, not of {method}{hint}")


def load_config(preset: str | Path | None = None, overrides: list[str] | tuple = (), base: dict | None = None,
                *, train: bool = False) -> Config:
    """A run's :class:`Config`, its method's settings in ``cfg.settings``, from defaults, an optional saved config
    ``base``, a preset and ``key=value`` overrides (:func:`a2d.config.read_layers`).

    ``preset`` is a preset name (``paper-teacher``, ``tiny-student``...) or a YAML file; several joined by ``+``
    are layered left to right (``paper-student+a2d-paper``: the model, then the method's settings). ``train``: a
    run without a method (``a2d train``): the method and the distillation settings are errors there, as every
    method's settings are; ``method=None`` in the config.
    """
    given = read_layers(preset, overrides, base)
    method = None if train else _run_method(given)
    own = {} if method is None else _fields(METHODS[method].Settings)
    common, values = {"method": method}, {}
    for g in given:
        if g.section is not None:
            value = _section_value(g)
            if g.section == method:
                values[g.key] = value
        elif g.key in FIELDS and not (method is None and g.key in DISTILL_KEYS):
            common[g.key] = coerce(FIELDS[g.key], g.value, g.source)
        elif g.key in own:
            values[g.key] = coerce(own[g.key], g.value, g.source)
        elif g.saved and (g.key in FIELDS or owners(g.key)):
            continue  # in a saved config, a setting the run does not use: an older version saved every key
        elif g.key in FIELDS:
            raise ConfigError(f"{g.where}: a setting of a2d distill; {TRAIN} has no method")
        elif owners(g.key):
            raise _not_owned(g, method)
        else:
            raise ConfigError(f"{g.source}: unknown key {g.key!r}{_did_you_mean(g.key)} (see `a2d config --keys`)")
    settings = None if method is None else METHODS[method].Settings(**values)
    return Config(**common, settings=settings, given=frozenset(g.key for g in given))


def describe_keys() -> str:
    """Every key with its default, choices and help: the common ones, ``a2d distill``'s, then by method."""
    common = [f for f in FIELDS.values() if f.name not in DISTILL_KEYS]
    lines = ["Every run (a2d train, a2d distill):", *describe_fields(common),
             "", "a2d distill:", *describe_fields(FIELDS[k] for k in DISTILL_KEYS)]
    declared = {}  # settings class -> the fields it declares itself (not those it inherits)
    for cls in METHODS.values():
        for klass in reversed(cls.Settings.__mro__):
            own = klass.__dict__.get("__annotations__", {})
            if dataclasses.is_dataclass(klass) and own and klass not in declared:
                declared[klass] = [f for f in dataclasses.fields(klass) if f.name in own]
    for klass, fields in declared.items():
        users = [name for name, cls in METHODS.items() if issubclass(cls.Settings, klass)]
        title = (klass.__doc__ or klass.__name__).strip().splitlines()[0].rstrip(".")
        lines += ["", f"{title} (method{'s' if len(users) > 1 else ''} {', '.join(users)}):", *describe_fields(fields)]
    return "\n".join(lines)


__all__ = ["load_config", "describe_keys", "owners", "TRAIN"]

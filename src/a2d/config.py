"""Run configuration: typed defaults, a YAML preset over them, ``key=value`` over that.

:class:`Config` holds the settings every run has (model, optimisation, validation) and those of
``a2d distill`` itself (``method``...). Each distillation method owns its own settings, a
:class:`~a2d.methods.base.MethodSettings` dataclass beside it (``methods/<name>.py``) made with the same
:func:`setting` helper; a run's config carries its method's as ``cfg.settings`` (``cfg.settings.lambda_att``),
and the method is built with that object alone. This module knows no method:
:func:`a2d.settings.load_config`, above both, resolves the common settings and the chosen method's from the
layers :func:`read_layers` reads here.

Keys stay flat: ``lambda_att=0.5`` on the command line, ``lambda_att: 0.5`` in a YAML file. A YAML preset may
also hold a method's section, applied to runs of that method only (a student preset's A2D settings)::

    d_model: 512
    a2d:
      lambda_att: 1.0

A run's ``config.yaml`` holds the common settings and, for a distillation, its method's (a ``train`` run:
none), flat. Unknown keys, values of the wrong type and settings of another method than the run's are errors
(:class:`ConfigError`) that name the key, never silent defaults; keys of older versions (:data:`RETIRED_KEYS`)
are accepted and ignored in saved configs and presets, so their ``config.yaml`` files still load.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from a2d.utils import atomic_write_text

PRESET_DIR = Path(__file__).parent / "configs"
SAVED = "saved config"  # the source name of a run's config.yaml (the base of a resumed run)
OVERRIDE = "override"  # the source name of a key=value
#: FFN activations a model may have: those Hugging Face's Marian and CTranslate2's converter both know.
ACTIVATIONS = ("relu", "gelu", "swish", "silu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "quick_gelu")
#: The beam a model decodes with when its generation config records none (a2d translate/evaluate's default).
DEFAULT_BEAM = 5


class ConfigError(ValueError):
    """A user mistake in a preset, a YAML file or a ``key=value`` override."""


def setting(default, help: str, choices: tuple | None = None, low: float | None = None, high: float | None = None):
    """A dataclass field with its help text and its checks (one of ``choices``, within ``[low, high]``)."""
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


def check_value(name: str, value, meta) -> None:
    """Raise :class:`ConfigError` when ``value`` breaks the ``choices``/``low``/``high`` of a field's metadata."""
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(f"{name}={value!r}: must be one of {', '.join(map(str, meta['choices']))}")
    if meta.get("low") is not None and value < meta["low"]:
        raise ConfigError(f"{name}={value!r}: must be >= {meta['low']}")
    if meta.get("high") is not None and value > meta["high"]:
        raise ConfigError(f"{name}={value!r}: must be <= {meta['high']}")


def check_fields(obj) -> None:
    """:func:`check_value` for every field of a dataclass instance (a Config or a method's settings)."""
    for f in dataclasses.fields(obj):
        if f.metadata.get("help") is not None:
            check_value(f.name, getattr(obj, f.name), f.metadata)


_f = setting


@dataclass
class Config:
    # --- model (a post-norm fairseq-style Transformer, built as a Hugging Face MarianMTModel) ---
    encoder_layers: int = _f(6, "encoder layers", low=1)
    decoder_layers: int = _f(6, "decoder layers", low=1)
    encoder_attention_heads: int = _f(4, "attention heads per encoder layer", low=1)
    decoder_attention_heads: int = _f(4, "attention heads per decoder layer", low=1)
    d_model: int = _f(512, "model width", low=8)
    ffn_dim: int = _f(1024, "feed-forward width (encoder and decoder)", low=8)
    dropout: float = _f(0.3, "dropout on residual branches", low=0.0, high=0.99)
    attention_dropout: float = _f(0.0, "dropout on attention probabilities", low=0.0, high=0.99)
    activation_dropout: float = _f(0.0, "dropout after the FFN activation", low=0.0, high=0.99)
    activation_function: str = _f("relu", "FFN activation (OPUS-MT's is swish)", choices=ACTIVATIONS)
    max_positions: int = _f(256, "longest sequence (subwords) the model accepts; a2d distill: the teacher's "
                            "max_position_embeddings unless this is set", low=8)
    init: str = _f("fairseq", "weight initialisation: fairseq (Xavier-uniform linears, q/k/v with gain 1/sqrt(2), "
                   "zero biases, embeddings N(0, d_model^-0.5)) or normal (every linear and embedding "
                   "N(0, d_model^-0.5), Hugging Face's scheme; deep post-norm models learn much more slowly)",
                   choices=("fairseq", "normal"))

    # --- optimisation (paper: Adam 0.9/0.98, lr 5e-4, inverse sqrt with 4000 warm-up updates) ---
    lr: float = _f(5e-4, "peak learning rate", low=0.0)
    warmup_updates: int = _f(4000, "linear warm-up updates before the inverse-sqrt decay", low=0)
    warmup_init_lr: float = _f(1e-7, "learning rate at update 0", low=0.0)
    adam_beta1: float = _f(0.9, "Adam beta1", low=0.0, high=1.0)
    adam_beta2: float = _f(0.98, "Adam beta2", low=0.0, high=1.0)
    adam_eps: float = _f(1e-8, "Adam epsilon", low=0.0)
    weight_decay: float = _f(1e-4, "decoupled weight decay (AdamW)", low=0.0)
    label_smoothing: float = _f(0.1, "label smoothing of the cross-entropy", low=0.0, high=0.99)
    clip_norm: float = _f(0.0, "gradient-norm clipping; 0 disables", low=0.0)
    max_tokens: int = _f(4096, "padded tokens (source or target) per batch and process", low=16)
    update_freq: int = _f(1, "batches per update and process (fairseq's --update-freq): their gradients are "
                          "averaged, as data-parallel processes' are", low=1)
    max_epochs: int = _f(100, "epochs at most", low=1)
    max_steps: int = _f(0, "updates at most; 0 means no limit", low=0)
    patience: int = _f(10, "stop after this many epochs without a better validation BLEU; 0 disables", low=0)
    seed: int = _f(1, "random seed (weights, batch order, dropout)")
    precision: str = _f("auto", "mixed precision: auto (bf16 on a capable GPU, else fp32), no, bf16 (a GPU, or a CPU "
                        "with AVX512-BF16 or AMX), fp16 (a GPU)",
                        choices=("auto", "no", "bf16", "fp16"))
    log_every: int = _f(50, "write a metrics line every N updates", low=1)
    save_every: int = _f(0, "also save last/ every N updates (0: at epoch ends only)", low=0)
    save_every_minutes: float = _f(0.0, "also save last/ every N minutes of training (0: off); Ctrl-C (SIGINT) and "
                                   "SIGTERM always save last/ before stopping", low=0.0)

    # --- validation ---
    valid_beam: int = _f(1, "beam size for the per-epoch validation BLEU", low=1)
    valid_max_sentences: int = _f(0, "score at most this many validation sentences (0: all)", low=0)
    max_len_a: float = _f(1.2, "decode at most a * source_length + b tokens", low=0.0)
    max_len_b: int = _f(10, "see max_len_a", low=1)
    num_beams: int = _f(0, "beam size recorded in the model's generation_config.json: what generate() without "
                        "arguments and a2d translate/evaluate without --beam decode with; 0: the teacher's "
                        f"num_beams (a2d distill from a folder that records one), else {DEFAULT_BEAM}", low=0)

    # --- distillation (a2d distill); each method's own settings: its Settings class (methods/<name>.py) ---
    method: str | None = _f("a2d", "distillation method (see `a2d methods`); a train run has none")
    aam_lr: float = _f(0.0, "learning rate of the method's own modules (AAM); 0: same as lr", low=0.0)
    loss_mixing: str = _f("standard", "standard: L = CE + sum of weighted terms, each a mean over real target "
                          "tokens; reference: the authors' mixing, 0.5*CE + 0.5*mu*KD as means over all target "
                          "positions, padding included (use with kl_norm=reference, as preset a2d-paper does)",
                          choices=("standard", "reference"))
    teacher_precision: str = _f("same", "same: the teacher runs under the student's mixed precision (bf16 KD "
                                "targets); fp32: the teacher runs in full fp32, as the authors ran it",
                                choices=("same", "fp32"))
    #: the method's own settings, an instance of its ``Settings`` dataclass (:func:`a2d.settings.load_config`
    #: resolves it); None for a run without a method (``a2d train``)
    settings: object = field(default=None, repr=False)
    #: the keys set by a saved config, a preset or an override (the rest are defaults), by
    #: :func:`a2d.settings.load_config`
    given: frozenset = field(default_factory=frozenset, repr=False, compare=False)

    # ------------------------------------------------------------------------------------------
    def __post_init__(self):
        check_fields(self)
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads:
                raise ConfigError(f"d_model={self.d_model} is not divisible by {side}_attention_heads={heads}")
        if self.method is None and self.settings is not None:
            raise ConfigError("a run without a method has no method settings")

    def without_method(self) -> Config:
        """This config for a run without a method (``a2d train``). A distillation setting given another value than
        its default would be lost without a word: it is an error naming the key."""
        changed = [k for k in DISTILL_KEYS[1:] if getattr(self, k) != FIELDS[k].default]
        if self.settings is not None:
            default = type(self.settings)()
            changed += [f.name for f in dataclasses.fields(self.settings)
                        if getattr(self.settings, f.name) != getattr(default, f.name)]
        if changed:
            raise ConfigError(f"{', '.join(changed)}: distillation settings, which a run without a method (a2d "
                              "train) does not use; load its config with load_config(..., train=True)")
        return dataclasses.replace(self, method=None, settings=None)

    def to_dict(self) -> dict:
        """The keys a run's ``config.yaml`` holds: the common settings, then the method and its own settings
        (none for a train run). Flat, as :func:`a2d.settings.load_config` reads them back."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in _INTERNAL and (self.method is not None or f.name not in DISTILL_KEYS)}
        if self.settings is not None:
            out.update(dataclasses.asdict(self.settings))
        return out


#: Fields of :class:`Config` that are not settings (no key of their own in ``config.yaml``).
_INTERNAL = ("method_values", "given")
#: The settings of ``a2d distill`` itself, which a train run's ``config.yaml`` leaves out.
DISTILL_KEYS = ("method", "aam_lr", "loss_mixing", "teacher_precision")
#: Keys of older versions, accepted in saved configs and presets and ignored (``beam``: ``a2d evaluate`` and
#: ``a2d translate`` take ``--beam``; the config's value was never used).
RETIRED_KEYS = ("beam",)
#: Fields of :class:`Config` that are not settings (no key of their own in ``config.yaml``).
_INTERNAL = ("settings", "given")
#: The common settings by key (those of :class:`Config`; a method's are its ``Settings``' fields).
FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config) if f.name not in _INTERNAL}

#: Settings that fix the shape of a run's model or method modules: ``--resume`` refuses to change them.
SHAPE_KEYS = ("encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads", "d_model",
              "ffn_dim", "max_positions", "activation_function", "method", "att_kinds", "att_granularity", "aam")


def coerce(owner: dataclasses.Field, value, source: str):
    """``value`` (from YAML or a ``key=value`` string) converted to the type of the field ``owner`` and checked
    against its choices and range, or a :class:`ConfigError` naming ``source`` and the key."""
    key, typ = owner.name, owner.type
    typ = {"int": int, "float": float, "str": str, "str | None": str, "bool": bool}.get(typ, typ)
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() not in ("true", "false", "yes", "no", "1", "0"):
                    raise ValueError(text)
                value = text.lower() in ("true", "yes", "1")
            else:
                value = typ(text)
        except ValueError:
            raise ConfigError(f"{source}: {key}={value!r} is not a valid {typ.__name__}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {key}={value!r} is not a valid {typ.__name__}")
    try:
        check_value(key, value, owner.metadata)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return value


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_paths(preset: str | Path | None) -> list[Path]:
    if preset is None:
        return []
    if Path(preset).is_file():
        return [Path(preset)]
    paths = []
    for part in str(preset).split("+"):
        path = Path(part)
        if not path.suffix:
            path = PRESET_DIR / f"{part}.yaml"
            if not path.exists():
                raise ConfigError(f"--preset {preset}: unknown preset {part!r} (choose from {', '.join(preset_names())}"
                                  ", or give a YAML file; join several with +)")
        paths.append(path)
    return paths


def read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value")
    return data


@dataclass(frozen=True)
class Given:
    """A value that one layer gives a key: ``source`` is :data:`SAVED`, a YAML file's path or :data:`OVERRIDE`;
    ``section`` the method whose section of a YAML file holds it (``a2d: {lambda_att: 1.0}``), else None."""

    key: str
    value: object
    source: str
    section: str | None = None

    @property
    def saved(self) -> bool:
        """From a run's saved config.yaml, which an older version may have written with other keys."""
        return self.source == SAVED

    @property
    def where(self) -> str:
        """How an error names it: ``override: lambda_att`` or ``paper-student.yaml: a2d.lambda_att``."""
        return f"{self.source}: " + (f"{self.section}.{self.key}" if self.section else self.key)


def read_layers(preset: str | Path | None = None, overrides: list[str] | tuple = (),
                base: dict | None = None) -> list[Given]:
    """Every value given, in the order the layers apply (later wins): ``base`` (a saved config), the preset
    files (a preset name or a YAML file; several joined by ``+``, left to right), the ``key=value`` overrides.

    Values are as written (checked by :func:`coerce` against the field that owns the key); a mapping under a
    key that is not a common setting is a method's section. :data:`RETIRED_KEYS` are skipped, and refused as
    overrides.
    """
    given = [Given(k, v, SAVED) for k, v in (base or {}).items()]
    for path in _preset_paths(preset):
        for k, v in read_yaml(path).items():
            k = str(k)
            if isinstance(v, dict) and k not in FIELDS:
                given += [Given(str(key), value, str(path), section=k) for key, value in v.items()]
            else:
                given.append(Given(k, v, str(path)))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: overrides are written key=value")
        k, v = item.split("=", 1)
        if k.strip() in RETIRED_KEYS:
            raise ConfigError(f"{OVERRIDE}: {k.strip()} is no longer a setting (see `a2d config --keys`)")
        given.append(Given(k.strip(), v.strip(), OVERRIDE))
    return [g for g in given if g.key not in RETIRED_KEYS]  # a saved config or preset of an older version


def save_config(cfg: Config, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe_fields(fields) -> list[str]:
    """``a2d config --keys`` lines of these fields: each key with its default and choices, then its help."""
    lines = []
    for f in fields:
        choices = f.metadata.get("choices")
        extra = f" [{'|'.join(choices)}]" if choices else ""
        lines.append(f"  {f.name} = {f.default!r}{extra}\n      {f.metadata.get('help', '')}")
    return lines


__all__ = ["Config", "ConfigError", "ACTIVATIONS", "DEFAULT_BEAM", "Given", "FIELDS", "SHAPE_KEYS", "DISTILL_KEYS", "RETIRED_KEYS", "SAVED",
           "OVERRIDE", "coerce", "read_layers", "save_config", "preset_names", "describe_fields", "read_yaml",
           "setting", "check_value", "check_fields"]

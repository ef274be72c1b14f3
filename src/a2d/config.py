"""Run configuration: typed defaults, a YAML preset over them, ``key=value`` over that.

The same :class:`Config` drives ``a2d train`` and ``a2d distill``; the resolved config is saved
as ``config.yaml`` beside every run. :class:`Config` holds the settings every run has (model,
optimisation, validation) and those of ``a2d distill`` itself (``method``...); each distillation
method declares its own settings beside it, a :class:`~a2d.methods.base.MethodSettings` dataclass
(``methods/<name>.py``), made with the same :func:`setting` helper. Keys stay flat: ``lambda_att=0.5``
on the command line, ``cfg.lambda_att`` in code; each key is checked against the field that declares
it. A run's ``config.yaml`` holds the common settings and, for a distillation, its method's (a
``train`` run: none). Unknown keys and values of the wrong type are errors (:class:`ConfigError`)
that name the key, never silent defaults; keys of older versions (:data:`RETIRED_KEYS`) are
accepted and ignored, so their ``config.yaml`` files still load.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "configs"


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
    activation_function: str = _f("relu", "FFN activation", choices=("relu", "gelu"))
    max_positions: int = _f(256, "longest sequence (subwords) the model accepts", low=8)
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
    precision: str = _f("auto", "mixed precision: auto (bf16 on a capable GPU, else fp32), no, bf16, fp16",
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
    #: values given for the methods' settings (any method's, checked), by key; see :meth:`settings_for`
    method_values: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------------
    def __post_init__(self):
        check_fields(self)
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads:
                raise ConfigError(f"d_model={self.d_model} is not divisible by {side}_attention_heads={heads}")
        methods = _methods()
        if self.method is not None and self.method not in methods:
            raise ConfigError(f"method={self.method!r}: unknown method (choose from {', '.join(sorted(methods))})")
        owners = method_fields()
        for key, value in self.method_values.items():
            if key not in owners:
                raise ConfigError(f"{key!r} is not a setting of any method (see `a2d config --keys`)")
            check_value(key, value, owners[key].metadata)

    def __getattr__(self, name: str):
        """``cfg.lambda_att``: a method's setting, the value given or the default of the field that declares it."""
        if name.startswith("__") or name == "method_values":
            raise AttributeError(name)
        values = self.__dict__.get("method_values", {})
        if name in values:
            return values[name]
        owner = method_fields().get(name)
        if owner is None:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        return owner.default

    def settings_for(self, method_cls):
        """``method_cls.Settings`` filled from the values given (defaults for the rest), checked."""
        names = {f.name for f in dataclasses.fields(method_cls.Settings)}
        return method_cls.Settings(**{k: v for k, v in self.method_values.items() if k in names})

    @property
    def settings(self):
        """The settings of ``self.method`` (a dataclass), or None for a train run (``method=None``)."""
        return None if self.method is None else self.settings_for(_methods()[self.method])

    def to_dict(self) -> dict:
        """The keys a run's ``config.yaml`` holds: the common settings, then the method and its own settings
        (none for a train run). Flat, as ``load_config`` reads them back."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "method_values" and (self.method is not None or f.name not in DISTILL_KEYS)}
        if self.method is not None:
            out.update(dataclasses.asdict(self.settings))
        return out


#: The settings of ``a2d distill`` itself, which a train run's ``config.yaml`` leaves out.
DISTILL_KEYS = ("method", "aam_lr", "loss_mixing", "teacher_precision")
#: Keys of older versions, accepted in saved configs and presets and ignored (``beam``: ``a2d evaluate`` and
#: ``a2d translate`` take ``--beam``; the config's value was never used).
RETIRED_KEYS = ("beam",)


def _methods() -> dict:
    from a2d.methods import METHODS  # the methods import this module: import them when first needed

    return METHODS


def method_fields() -> dict[str, dataclasses.Field]:
    """Every method's settings by key: ``{key: the field that declares it}`` (a key shared by several methods
    is declared once, in a settings class they inherit, e.g. ``mu_kd`` in :class:`~a2d.methods.kd.WordKDSettings`)."""
    owners: dict[str, dataclasses.Field] = {}
    for cls in _methods().values():
        for f in dataclasses.fields(cls.Settings):
            if owners.setdefault(f.name, f) is not f and owners[f.name].default != f.default:
                raise TypeError(f"{f.name} is declared twice, with different defaults ({cls.__name__}.Settings)")
    return owners


_FIELDS = {f.name: f for f in dataclasses.fields(Config) if f.name != "method_values"}

#: Settings that fix the shape of a run's model or method modules: ``--resume`` refuses to change them.
SHAPE_KEYS = ("encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads", "d_model",
              "ffn_dim", "max_positions", "activation_function", "method", "att_kinds", "att_granularity", "aam")


def _coerce(key: str, value, source: str):
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field's type, or raise naming it."""
    owner = _FIELDS.get(key) or method_fields().get(key)
    if owner is None:
        raise ConfigError(f"{source}: unknown key {key!r} (see `a2d config --keys`)")
    typ = owner.type
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


def load_config(preset: str | Path | None = None, overrides: list[str] | tuple = (), base: dict | None = None) -> Config:
    """Build a :class:`Config` from defaults, an optional base dict, a preset and ``key=value`` overrides.

    ``preset`` is a preset name (``paper-teacher``, ``tiny-student``...) or a path to a YAML file; several
    joined by ``+`` are layered left to right (``paper-student+a2d-paper``: the model, then the method's settings).
    The keys of every method are accepted (a student preset may set ``lambda_att`` for a run of another method)
    and checked; the run uses, and saves, those of its ``method``.
    """
    values: dict = {}

    def put(key: str, value, source: str) -> None:
        if key in RETIRED_KEYS:
            if source == "override":
                raise ConfigError(f"override: {key} is no longer a setting (see `a2d config --keys`)")
            return  # a saved config or preset of an older version
        values[key] = _coerce(key, value, source)

    if base:
        for k, v in base.items():
            put(k, v, "saved config")
    for path in _preset_paths(preset):
        for k, v in read_yaml(path).items():
            put(k, v, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: overrides are written key=value")
        k, v = item.split("=", 1)
        put(k.strip(), v.strip(), "override")
    common = {k: v for k, v in values.items() if k in _FIELDS}
    return Config(**common, method_values={k: v for k, v in values.items() if k not in _FIELDS})


def save_config(cfg: Config, path: Path) -> None:
    from a2d.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _describe(fields) -> list[str]:
    lines = []
    for f in fields:
        choices = f.metadata.get("choices")
        extra = f" [{'|'.join(choices)}]" if choices else ""
        lines.append(f"  {f.name} = {f.default!r}{extra}\n      {f.metadata.get('help', '')}")
    return lines


def describe_keys() -> str:
    """Every key with its default, choices and help: the common ones, ``a2d distill``'s, then by method."""
    common = [f for f in _FIELDS.values() if f.name not in DISTILL_KEYS]
    lines = ["Every run (a2d train, a2d distill):", *_describe(common),
             "", "a2d distill:", *_describe(_FIELDS[k] for k in DISTILL_KEYS)]
    methods = _methods()
    declared = {}  # settings class -> the fields it declares itself (not those it inherits)
    for cls in methods.values():
        for klass in reversed(cls.Settings.__mro__):
            own = klass.__dict__.get("__annotations__", {})
            if dataclasses.is_dataclass(klass) and own and klass not in declared:
                declared[klass] = [f for f in dataclasses.fields(klass) if f.name in own]
    for klass, fields in declared.items():
        users = [name for name, cls in methods.items() if issubclass(cls.Settings, klass)]
        title = (klass.__doc__ or klass.__name__).strip().splitlines()[0].rstrip(".")
        lines += ["", f"{title} (method{'s' if len(users) > 1 else ''} {', '.join(users)}):", *_describe(fields)]
    return "\n".join(lines)


__all__ = ["Config", "ConfigError", "SHAPE_KEYS", "DISTILL_KEYS", "RETIRED_KEYS", "load_config", "save_config",
           "preset_names", "describe_keys", "read_yaml", "setting", "check_fields", "method_fields"]

"""Run configuration: one dataclass with typed defaults, a YAML preset over it, ``key=value`` over that.

The same :class:`Config` drives ``a2d train`` and ``a2d distill``; the resolved config is saved
as ``config.yaml`` beside every run. Unknown keys and values of the wrong type are errors
(:class:`ConfigError`) that name the key, never silent defaults.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PRESET_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A user mistake in a preset, a YAML file or a ``key=value`` override."""


def _f(default, help: str, choices: tuple | None = None, low: float | None = None, high: float | None = None):
    return field(default=default, metadata={"help": help, "choices": choices, "low": low, "high": high})


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

    # --- validation ---
    valid_beam: int = _f(1, "beam size for the per-epoch validation BLEU", low=1)
    valid_max_sentences: int = _f(0, "score at most this many validation sentences (0: all)", low=0)
    beam: int = _f(5, "beam size for a2d evaluate / translate", low=1)
    max_len_a: float = _f(1.2, "decode at most a * source_length + b tokens", low=0.0)
    max_len_b: int = _f(10, "see max_len_a", low=1)

    # --- distillation (a2d distill) ---
    method: str = _f("a2d", "distillation method (see `a2d methods`)")
    mu_kd: float = _f(1.0, "weight of word-level KD (mu in L = CE + lambda*L_att + mu*L_KD)", low=0.0)
    kd_temperature: float = _f(1.0, "softmax temperature of word-level KD", low=1e-3)
    lambda_att: float = _f(0.1, "initial weight of the attention loss (lambda; the paper presets set 1.0)",
                           low=0.0)
    lambda_decay: float = _f(0.9, "lambda = lambda_att * decay^(epoch-1) (or per update)", low=0.0, high=1.0)
    lambda_decay_unit: str = _f("epoch", "decay lambda per epoch or per update", choices=("epoch", "update"))
    att_kinds: str = _f("all", "attention kinds that take part (Table 5)",
                        choices=("all", "enc-self", "dec-all", "dec-self", "dec-cross"))
    att_granularity: str = _f("head", "head-wise maps (A2D) or per-layer averaged maps (Table 4)",
                              choices=("head", "layer"))
    kl_norm: str = _f("per-query", "how the attention KL is normalised: per-query distributions with padding "
                      "masked and a per-token scale, or the authors' reference arithmetic",
                      choices=("per-query", "reference"))
    aam: str = _f("convex", "AAM weights: convex (softmax-normalised, each intermediate map a mixture of "
                  "student maps) or linear (free weights and bias, the paper's 1x1 convolution)",
                  choices=("convex", "linear"))
    aam_lr: float = _f(0.0, "learning rate of the method's own modules (AAM); 0: same as lr", low=0.0)
    loss_mixing: str = _f("standard", "standard: L = CE + sum of weighted terms, each a mean over real target "
                          "tokens; reference: the authors' mixing, 0.5*CE + 0.5*mu*KD as means over all target "
                          "positions, padding included (use with kl_norm=reference, as preset a2d-paper does)",
                          choices=("standard", "reference"))
    teacher_precision: str = _f("same", "same: the teacher runs under the student's mixed precision (bf16 KD "
                                "targets); fp32: the teacher runs in full fp32, as the authors ran it",
                                choices=("same", "fp32"))

    # --- baselines (a2d distill --method NAME); see each method's module docstring ---
    selective_word_rate: float = _f(0.5, "selective-kd: share of target tokens that receive KD", low=0.0, high=1.0)
    feature_weight: float = _f(1.0, "weight of the feature losses of tinybert/minilm/alp-kd/pkd/ckd", low=0.0)
    pkd_mapping: str = _f("skip", "pkd: skip or last-k teacher layers", choices=("skip", "last"))
    ckd_grouping: str = _f("sc", "ckd: layer grouping", choices=("sc", "cc", "rc", "oc"))

    # ------------------------------------------------------------------------------------------
    def __post_init__(self):
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            meta = f.metadata
            if meta.get("choices") and value not in meta["choices"]:
                raise ConfigError(f"{f.name}={value!r}: must be one of {', '.join(map(str, meta['choices']))}")
            if meta.get("low") is not None and value < meta["low"]:
                raise ConfigError(f"{f.name}={value!r}: must be >= {meta['low']}")
            if meta.get("high") is not None and value > meta["high"]:
                raise ConfigError(f"{f.name}={value!r}: must be <= {meta['high']}")
        for side in ("encoder", "decoder"):
            heads = getattr(self, f"{side}_attention_heads")
            if self.d_model % heads:
                raise ConfigError(f"d_model={self.d_model} is not divisible by {side}_attention_heads={heads}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}

#: Settings that fix the shape of a run's model or method modules: ``--resume`` refuses to change them.
SHAPE_KEYS = ("encoder_layers", "decoder_layers", "encoder_attention_heads", "decoder_attention_heads", "d_model",
              "ffn_dim", "max_positions", "activation_function", "method", "att_kinds", "att_granularity", "aam")


def _coerce(key: str, value, source: str):
    """Convert ``value`` (from YAML or a ``key=value`` string) to the field's type, or raise naming it."""
    if key not in _FIELDS:
        raise ConfigError(f"{source}: unknown key {key!r} (see `a2d config --keys`)")
    typ = _FIELDS[key].type
    typ = {"int": int, "float": float, "str": str, "bool": bool}.get(typ, typ)
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
    """
    values: dict = {}
    if base:
        for k, v in base.items():
            values[k] = _coerce(k, v, "saved config")
    for path in _preset_paths(preset):
        for k, v in read_yaml(path).items():
            values[k] = _coerce(k, v, str(path))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{item!r}: overrides are written key=value")
        k, v = item.split("=", 1)
        values[k.strip()] = _coerce(k.strip(), v.strip(), "override")
    return Config(**values)


def save_config(cfg: Config, path: Path) -> None:
    from a2d.utils import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe_keys() -> str:
    lines = []
    for f in dataclasses.fields(Config):
        default = f.default
        choices = f.metadata.get("choices")
        extra = f" [{'|'.join(choices)}]" if choices else ""
        lines.append(f"  {f.name} = {default!r}{extra}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


__all__ = ["Config", "ConfigError", "SHAPE_KEYS", "load_config", "save_config", "preset_names", "describe_keys", "read_yaml"]

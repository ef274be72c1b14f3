"""Guard: a2d.export swaps the Marian loader in ctranslate2's private ``converters.transformers._MODEL_LOADERS``
and builds on the private ``MarianMTLoader``/``BartLoader`` methods and ``_SUPPORTED_ACTIVATIONS`` (pyproject caps
``ctranslate2<4.9``). If a new CTranslate2 changes their shape, this fails here, loudly, naming what changed, rather
than exports quietly decoding otherwise than Hugging Face (tests/test_export.py compares their strings)."""
from __future__ import annotations

import inspect

import ctranslate2
import pytest
from ctranslate2.converters import transformers as ct2t
from ctranslate2.specs import common_spec, transformer_spec

from a2d.export import _loader_class, _marian_as_hugging_face

VERSION = f"ctranslate2 {ctranslate2.__version__}"


def _params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_converter_finds_its_loader_in_model_loaders():
    assert isinstance(ct2t._MODEL_LOADERS, dict) and isinstance(ct2t._MODEL_LOADERS.get("MarianConfig"),
                                                                 ct2t.MarianMTLoader), \
        f"{VERSION}: _MODEL_LOADERS no longer maps MarianConfig to a MarianMTLoader; update a2d.export"
    assert "_MODEL_LOADERS.get(" in inspect.getsource(ct2t.TransformersConverter), \
        f"{VERSION}: TransformersConverter no longer looks its loader up in _MODEL_LOADERS; update a2d.export"
    stock = ct2t._MODEL_LOADERS["MarianConfig"]
    with _marian_as_hugging_face():
        assert type(ct2t._MODEL_LOADERS["MarianConfig"]).__name__ == "_MarianAsHuggingFace"
    assert ct2t._MODEL_LOADERS["MarianConfig"] is stock


@pytest.mark.parametrize("name, params", [
    ("get_model_spec", ["self", "model"]),
    ("set_config", ["self", "config", "model", "tokenizer"]),
    ("set_encoder", ["self", "spec", "encoder"]),
    ("set_decoder", ["self", "spec", "decoder"]),
    ("set_linear", ["self", "spec", "module"]),
    ("get_vocabulary", ["self", "model", "tokenizer"]),
    ("set_vocabulary", ["self", "spec", "tokens"]),
])
def test_loader_methods_a2d_overrides_or_calls(name, params):
    assert issubclass(ct2t.MarianMTLoader, ct2t.BartLoader), f"{VERSION}: MarianMTLoader is no BartLoader any more"
    for cls in (ct2t.BartLoader, _loader_class()):
        assert _params(getattr(cls, name))[:len(params)] == params, \
            f"{VERSION}: {cls.__name__}.{name} changed its parameters; update a2d.export._loader_class"


def test_specs_a2d_builds():
    assert all(isinstance(v, common_spec.Activation) for v in ct2t._SUPPORTED_ACTIVATIONS.values()) \
        and {"relu", "swish", "gelu"} <= ct2t._SUPPORTED_ACTIVATIONS.keys(), \
        f"{VERSION}: _SUPPORTED_ACTIVATIONS changed; update a2d.export._loader_class"
    for spec in (transformer_spec.TransformerEncoderSpec, transformer_spec.TransformerDecoderSpec):
        assert _params(spec.__init__)[:3] == ["self", "num_layers", "num_heads"] and \
            {"pre_norm", "activation", "layernorm_embedding"} <= set(_params(spec.__init__)), \
            f"{VERSION}: {spec.__name__} changed its parameters; update a2d.export._loader_class"
    assert _params(transformer_spec.TransformerSpec.__init__) == ["self", "encoder", "decoder"]
    for method in ("register_source_vocabulary", "register_target_vocabulary"):
        assert hasattr(transformer_spec.TransformerSpec, method), f"{VERSION}: TransformerSpec.{method} is gone"

"""Default values that both the command line (its options and their help) and the components use.

Light to import: nothing here imports torch, transformers or another a2d module, so that building the
command-line parser (and every ``a2d ... --help``) loads nothing heavy.
"""
from __future__ import annotations

#: ``a2d demo``: the students' budget, updates of the tiny-student preset (about 1.2 epochs of Multi30k).
DEMO_STEPS = 300

#: ``a2d distill-data``: the beam of the teacher's translations (sequence-level KD).
SEQ_KD_BEAM = 5

#: ``a2d distill-data --cache-topk`` (:mod:`a2d.teacher_cache`): examples per shard file, padded tokens per teacher
#: batch, and the temperature of the cached distributions (kd_temperature's default).
CACHE_SHARD_SIZE = 5000
CACHE_MAX_TOKENS = 4096
CACHE_TEMPERATURE = 1.0

#: ``a2d export``: the CTranslate2 quantizations a2d offers (the first is the default).
QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "float32")

#: ``a2d shortlist``: target pieces kept per source piece, and the most frequent target pieces always allowed.
SHORTLIST_TOP_N = 50
SHORTLIST_FREQUENT = 100

__all__ = ["SHORTLIST_TOP_N", "SHORTLIST_FREQUENT", "DEMO_STEPS", "SEQ_KD_BEAM", "CACHE_SHARD_SIZE", "CACHE_MAX_TOKENS", "CACHE_TEMPERATURE", "QUANTIZATIONS"]

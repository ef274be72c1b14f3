"""The one small interface every distillation method implements.

A method is an ``nn.Module`` (so it owns its trainable parts, e.g. the AAM of A2D, which the
distill recipe adds to the optimizer explicitly and saves beside the student, never inside it).
It declares what it needs from the two forward passes, and returns its loss terms by name,
unweighted; :meth:`weights` says how the recipe mixes them:

    loss = L_CE + sum(weights[name] * terms[name])

The recipe computes the label-smoothed cross-entropy itself and logs every term and weight.

A method owns its knobs: a :class:`MethodSettings` dataclass beside it (``Settings``), its fields made with
:func:`a2d.config.setting` (help text, choices, ranges). It is built with an instance of that class, its
``self.settings`` (:func:`a2d.settings.load_config` resolves it with the common :class:`~a2d.config.Config`),
never with the whole config.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import Seq2SeqLMOutput

from a2d.config import check_fields
from a2d.errors import TeacherRequired
from a2d.families import Shape, shape_of
from a2d.utils import UserError

# What a method may ask for from the teacher's and the student's forward passes.
LOGITS, ATTENTIONS, HIDDEN_STATES = "logits", "attentions", "hidden_states"
#: The name of the word-level KD term (the KL to the teacher's token distributions) in a method's terms and
#: weights; the recipe's ``loss_mixing=reference`` scales it with the cross-entropy, as the authors' criterion does.
KD_TERM = "kd"


@dataclass
class MethodSettings:
    """No settings of its own."""

    def __post_init__(self):
        check_fields(self)


@dataclass(frozen=True)
class Progress:
    """Where training is: ``epoch`` counts from 1, ``update`` from 0 (updates done so far)."""

    epoch: int
    update: int
    updates_per_epoch: int | None = None  # this process's batches per epoch


class DistillMethod(nn.Module):
    """Base class. Subclasses set ``name``, ``summary``, ``paper`` and ``needs`` and implement ``loss_terms``."""

    name: str = ""
    summary: str = ""  # one line for `a2d methods`
    paper: str = ""  # "Author et al. YEAR, Title"
    needs: frozenset[str] = frozenset()
    needs_teacher: bool = True
    reads_kd_cache: bool = False  # its KD term can come from a teacher cache (kd_cache=, `a2d distill-data --cache-topk`)
    reads_cached_maps: bool = False  # and the teacher's attention maps (`--cache-attention`; see cached_map_kinds)
    # what the experiments (a2d.experiments) need to know about a method
    label: str = ""  # its row in the result tables ("Vanilla KD"); empty: its name
    generated_data: bool = False  # trains on the teacher's translations (`a2d distill-data`), not on the corpus
    baseline: str | None = None  # the paired tests' baseline it is by default: "nokd" (no distillation) or "kd"
    alignment: bool = False  # learns attention alignments that `a2d plot-alignment` draws (method.json)
    Settings: type[MethodSettings] = MethodSettings  # its own knobs (keys of the run's config)
    #: the model families (a2d.families) it distils; None: every family (what it reads, every family has)
    families: tuple[str, ...] | None = ("marian",)

    def __init__(self, settings: MethodSettings, student_config, teacher_config):
        """``student_config``/``teacher_config``: the models' Hugging Face configs (or their
        :class:`~a2d.families.Shape`); the method reads them as ``self.student_shape``/``self.teacher_shape``."""
        super().__init__()
        if type(settings) is not self.Settings:  # another method's settings: keys this one would not read
            raise TypeError(f"method {self.name} is built with its own settings, {self.Settings.__name__}, "
                            f"not {type(settings).__name__}")
        self.settings = settings
        if self.needs_teacher and teacher_config is None:
            raise TeacherRequired(self.name)
        self.student_shape: Shape | None = shape_of(student_config) if student_config is not None else None
        self.teacher_shape: Shape | None = shape_of(teacher_config) if teacher_config is not None else None
        if self.student_shape is None:  # a method that reads no model (seq-kd's tests build it so)
            return
        family = self.student_shape.family
        if self.families is not None and family not in self.families:
            raise UserError(f"method {self.name} distils {' and '.join(self.families)} models, not {family} "
                            "(see a2d methods)")
        if self.teacher_shape is not None and self.teacher_shape.family != family:
            raise UserError(f"the teacher is a {self.teacher_shape.family} model and the student a {family} model: "
                            "a2d distils within one model family")
        if ATTENTIONS in self.needs and self.student_shape.attention_dropout > 0:
            # transformers returns attention probabilities after dropout: rows would no longer sum to 1
            raise UserError(f"attention_dropout={self.student_shape.attention_dropout}: method {self.name} learns "
                            "from the student's attention maps, which would be taken after dropout (rows no "
                            "longer distributions); set attention_dropout=0")

    def attach(self, student: nn.Module, teacher: nn.Module | None) -> None:
        """Called once with both models, for a method that needs their weights (MiniLM's value projections).

        Keep plain references only: the models must not become submodules (parameters or state) of the method.
        """

    def cached_map_kinds(self, attention: dict | None, where: str) -> tuple[str, ...]:
        """The kinds of teacher attention maps this method reads from its teacher cache, whose index records
        ``attention`` (kinds, layers and heads per kind; None: the cache holds no maps); ``where`` names the cache
        in errors. A method that cannot learn from the maps as cached raises ``UserError``. () : none (the
        teacher runs for whatever maps the method needs)."""
        return ()

    def check_data(self, meta: dict) -> None:
        """Called with the data directory's ``meta.json``; raise ``UserError`` if the method cannot train on it."""

    def loss_terms(self, batch: dict[str, torch.Tensor], student: Seq2SeqLMOutput,
                   teacher: Seq2SeqLMOutput | None, progress: Progress) -> dict[str, torch.Tensor]:
        """Unweighted scalar loss terms by name (each a 0-dim fp32 tensor)."""
        raise NotImplementedError

    def weights(self, progress: Progress) -> dict[str, float]:
        """Weight of each term returned by :meth:`loss_terms` at this point of training."""
        raise NotImplementedError

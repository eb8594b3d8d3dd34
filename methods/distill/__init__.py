"""Distillation: one module per method, the distiller that applies them.

Each method module declares, together: ``NAME``; ``DEFAULTS`` (its hyperparameters, the literature's weights);
``SEARCH`` (its Optuna space: ``("float" | "log", low, high)``, ``("choice", [...])`` or ``"taps"`` for the
family's tap choices); ``TEACHER`` (whether it reads a teacher); ``ADAPTED`` (where the student's map passes a 1×1
adapter to the teacher's shape first, default False); its loss as a pure function whose docstring carries the
formula; and how a step's terms come from the distiller's captured tensors: ``tap_term(d, hp, tap, s, t, targets,
keys)`` for a feature method (one term per tap), else ``terms(d, hp, teacher, targets, keys, losses)``; optionally
``check(family)``, which raises where a detector family lacks what the method needs. Adding a method is adding a
module and its name to :data:`METHODS` (docs/methods.md shows one).
"""
from methods.distill import at, cwd, fgfi, fitnets, hinton, ld, ls, nst, pkd
from methods.distill.at import attention_transfer_loss
from methods.distill.cwd import cwd_loss
from methods.distill.fgfi import fgfi_loss, fgfi_mask
from methods.distill.fitnets import fitnets_loss
from methods.distill.hinton import hinton_kd_loss, sigmoid_kd_loss
from methods.distill.ld import ld_loss
from methods.distill.ls import label_smoothing_term
from methods.distill.nst import nst_loss, nst_teacher_kernel
from methods.distill.pkd import pkd_loss

METHODS = {m.NAME: m for m in (hinton, fitnets, at, nst, pkd, cwd, fgfi, ld, ls)}

__all__ = ["METHODS", "hinton_kd_loss", "sigmoid_kd_loss", "fitnets_loss", "attention_transfer_loss", "nst_loss",
           "nst_teacher_kernel", "pkd_loss", "cwd_loss", "fgfi_loss", "fgfi_mask", "ld_loss", "label_smoothing_term"]

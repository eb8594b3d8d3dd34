"""Distillation losses (pure functions, the formula in each docstring) and the distiller that applies them."""
from methods.distill.losses import (attention_transfer_loss, cwd_loss, fgfi_loss, fgfi_mask, fitnets_loss,
                                    hinton_kd_loss, ld_loss, nst_loss, pkd_loss, sigmoid_kd_loss)

__all__ = ["hinton_kd_loss", "sigmoid_kd_loss", "fitnets_loss", "attention_transfer_loss", "nst_loss", "pkd_loss",
           "cwd_loss", "fgfi_loss", "fgfi_mask", "ld_loss"]

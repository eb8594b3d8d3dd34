"""Knowledge distillation: pure loss functions, FitNets adapters and a thin distiller for every detector family."""
from methods.distill.losses import (attention_transfer_loss, fitnets_loss, hinton_kd_loss, nst_loss,
                                    sigmoid_kd_loss)

__all__ = ["hinton_kd_loss", "sigmoid_kd_loss", "fitnets_loss", "attention_transfer_loss", "nst_loss"]

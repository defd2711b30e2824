"""anoise: adaptive noise injection for stochastic student networks.

Gaussian noise whose scale follows each channel's mini-batch statistics, injected into an
existing deterministic network (Tan, Elovici and Binder, "Adaptive Noise Injection for Training
Stochastic Student Networks from Deterministic Teachers", ICPR 2020).
"""

from . import functional
from .backends import BackendInfo, backends
from .convert import (
    calibrate,
    convert_sync,
    ensemble_predict,
    noise_layers,
    set_alpha,
    to_stochastic,
)
from .modules import (
    AdaptiveNoise,
    AdaptiveNoiseConv1d,
    AdaptiveNoiseConv2d,
    AdaptiveNoiseConv3d,
    AdaptiveNoiseConvTranspose1d,
    AdaptiveNoiseConvTranspose2d,
    AdaptiveNoiseConvTranspose3d,
    AdaptiveNoiseLinear,
    AdaptiveNoiseMultiheadAttention,
    twin_class,
)
from .report import ConversionSummary, summary

__version__ = "0.1.0"

__all__ = [
    "AdaptiveNoise",
    "AdaptiveNoiseConv1d",
    "AdaptiveNoiseConv2d",
    "AdaptiveNoiseConv3d",
    "AdaptiveNoiseConvTranspose1d",
    "AdaptiveNoiseConvTranspose2d",
    "AdaptiveNoiseConvTranspose3d",
    "AdaptiveNoiseLinear",
    "AdaptiveNoiseMultiheadAttention",
    "ConversionSummary",
    "BackendInfo",
    "backends",
    "calibrate",
    "convert_sync",
    "ensemble_predict",
    "functional",
    "noise_layers",
    "set_alpha",
    "summary",
    "to_stochastic",
    "twin_class",
]

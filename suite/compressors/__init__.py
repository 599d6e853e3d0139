"""Compressors: importing this package registers every method (one module each)."""

from . import dense, doping, hybrid, kronecker, lowrank  # noqa: F401  (registration)
from .accounting import Accounting, MatrixAccount, Storage, account
from .registry import REGISTRY, CompressorConfig, Method, Structured, available, get, make_config, register

__all__ = [
    "REGISTRY",
    "Accounting",
    "CompressorConfig",
    "MatrixAccount",
    "Method",
    "Storage",
    "Structured",
    "account",
    "available",
    "get",
    "make_config",
    "register",
]

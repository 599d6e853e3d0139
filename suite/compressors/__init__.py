"""Compressors: one module per method in this package, each registering itself; importing the package imports
every module in it, so adding a method is adding its module. Installed packages add theirs by entry point
(``suite.plugins``)."""

import importlib
import pkgutil

from .. import plugins as _plugins
from .accounting import Accounting, MatrixAccount, Storage, account
from .registry import REGISTRY, CompressorConfig, Method, Structured, available, get, make_config, register

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

_plugins.load("methods", REGISTRY, register, Method)  # installed packages' methods (suite.plugins)

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

"""Benchmark suite for compressed recurrent models.

The spine: a config (``suite.config``) goes into ``suite.train.train``, which writes a record
(``suite.record``, kept by ``suite.store``); records become tables and figures (``suite.report``).

As a library (docs/library.md): ``suite.compress(model, "doped_kp", factor=10)`` compresses any module in place
and returns a ``suite.Compressed`` (accounting, training hooks, ``export``); ``suite.load`` reads an export back.
"""

__version__ = "0.1.0"

__all__ = ["Compressed", "compress", "load", "methods"]


def __getattr__(name: str):  # the library names load torch; ``import suite`` alone (the CLI) stays light
    if name in ("Compressed", "compress", "load"):
        from . import api

        return getattr(api, name)
    if name == "methods":
        from .compressors import available

        return available
    raise AttributeError(f"module 'suite' has no attribute {name!r}")

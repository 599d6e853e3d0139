"""Benchmark suite for compressed recurrent models.

The spine: a config (``suite.config``) goes into ``suite.train.train``, which writes a record
(``suite.track``); records become tables and figures (``suite.report``).
"""

__version__ = "0.1.0"

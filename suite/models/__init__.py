"""Plain nn.Modules; compression is applied to them from outside (suite.compressors)."""

from .lm import LSTMLanguageModel

__all__ = ["LSTMLanguageModel"]

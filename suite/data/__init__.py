"""Corpora, vocabularies and BPTT batching (``datasets`` underneath)."""

from .corpus import BPTTWindows, Corpus, batchify, load_corpus, prefix
from .sources import SOURCES, cache_dir, data_dir, locate

__all__ = [
    "SOURCES",
    "BPTTWindows",
    "Corpus",
    "batchify",
    "cache_dir",
    "data_dir",
    "load_corpus",
    "locate",
    "prefix",
]

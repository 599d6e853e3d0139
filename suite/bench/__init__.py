"""Speed benchmarks. Every number is a ratio against the dense model measured in the same process, models
interleaved step by step so that machine noise hits all of them alike; medians of repeated steps."""

from .generate import bench_decode, bench_generate, compressed_lm, format_decode, format_generate
from .infer import (
    bench_infer,
    compressed_lstm,
    dense_step,
    deployed_step,
    format_infer,
    infer_methods,
    lstm_cell,
)
from .train import bench_train, format_rows

__all__ = [
    "bench_decode",
    "bench_generate",
    "bench_infer",
    "bench_train",
    "compressed_lm",
    "compressed_lstm",
    "deployed_step",
    "dense_step",
    "format_decode",
    "format_generate",
    "format_infer",
    "format_rows",
    "infer_methods",
    "lstm_cell",
]

"""Speed benchmarks. Every number is a ratio against the dense model measured in the same process, models
interleaved step by step so that machine noise hits all of them alike; medians of repeated steps."""

from .common import caches, check_device
from .generate import (
    SOFTMAX_FORMS,
    bench_decode,
    bench_generate,
    compressed_lm,
    format_decode,
    format_generate,
    zipf_counts,
)
from .infer import (
    bench_infer,
    compressed_lstm,
    dense_step,
    deployable,
    deployed_step,
    format_infer,
    infer_methods,
    lstm_cell,
    module_step,
)
from .train import bench_train, format_rows

__all__ = [
    "SOFTMAX_FORMS",
    "bench_decode",
    "bench_generate",
    "bench_infer",
    "bench_train",
    "caches",
    "check_device",
    "compressed_lm",
    "compressed_lstm",
    "deployable",
    "deployed_step",
    "dense_step",
    "format_decode",
    "format_generate",
    "format_infer",
    "format_rows",
    "infer_methods",
    "lstm_cell",
    "module_step",
    "zipf_counts",
]

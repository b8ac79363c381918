"""The pretrained Fashion-MNIST zoo, shipped in ``data/zoo``: the catalogue's public names.

``from dynexit import zoo; zoo.load_model(name)`` opens what the zoo ships (:mod:`dynexit.zoo.catalog`,
read-only, no training imports: the app and the report stand on it). Rebuilding the files is the
building side, :mod:`dynexit.zoo.reproduce` (``dynexit zoo reproduce NAME``), imported on its own.
"""

from dynexit.zoo.catalog import (ENTRIES, HASH_CHARS, SPLITS, UNTRAINED, ZooEntry, available, bench_path,
                                 branch_study_path, declared_costs, describe_weights, display_path, get_entry,
                                 info, list, load_bench, load_branch_study, load_model, load_table, looks_like_path,
                                 read_json, resolve_model, shipped_dir, table_path, weights_path, weights_record, weights_source,
                                 zoo_dir)

__all__ = ["ENTRIES", "HASH_CHARS", "SPLITS", "UNTRAINED", "ZooEntry", "available", "bench_path",
           "branch_study_path", "declared_costs", "describe_weights", "display_path", "get_entry", "info", "list",
           "load_bench", "load_branch_study", "load_model", "load_table", "looks_like_path", "read_json",
           "resolve_model", "shipped_dir", "table_path", "weights_path", "weights_record", "weights_source", "zoo_dir"]

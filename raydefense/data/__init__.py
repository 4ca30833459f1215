"""Data: the image pool and dataset registry, the split plan + membership matrix, the training
example types, Parquet tables.

Importing this package registers every built-in dataset in `DATASETS`.
"""

# Registration side effects.
from raydefense.data import formats, sources  # noqa: F401

# Re-exported (the `X as X` form marks an explicit re-export for type checkers).
from raydefense.data.pool import DATASETS as DATASETS
from raydefense.data.pool import ImagePool as ImagePool
from raydefense.data.pool import to_model_range as to_model_range

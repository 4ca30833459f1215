"""Data: the image pool and dataset registry, the split plan + membership matrix, the training
example types, Parquet tables.

Importing this package registers every built-in dataset in `DATASETS`.
"""

# Registration side effects.
from raydefense.data import formats, sources  # noqa: F401
from raydefense.data.pool import DATASETS, ImagePool, to_model_range  # noqa: F401

"""Data: image sources (registry), the split plan + membership matrix, Parquet tables."""

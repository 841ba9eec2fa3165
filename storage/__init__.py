"""Where data lives and how it is laid out: fsspec URIs, Parquet schemas and
atomic part writes, DuckDB connections over outputs, and readers for human
memorability data. Nothing here imports Prefect or torch.
"""

"""Prefect tasks of the scoring pipeline: discover images, plan shards, score a
shard, write parts. Each module keeps its logic in plain functions (testable
without an orchestrator) and wraps them as Prefect tasks with retries where I/O
can fail.
"""

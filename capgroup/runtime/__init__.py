"""Runtime: BatchingConsumer, per-partition buffers, commit-after-flush, memory budget."""

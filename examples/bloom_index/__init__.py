"""The bloom index example: one bloom filter of record keys per partition and offset range."""

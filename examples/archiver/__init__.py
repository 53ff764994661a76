"""The archiver example: each batch becomes one gzip JSON-lines file per partition and range."""

"""Thin entry points that DVC and the CLI call; all the work lives in `pipeline`."""

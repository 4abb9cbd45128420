"""Pydantic models: the single source of truth for params.yaml, catalog entries and store manifests."""

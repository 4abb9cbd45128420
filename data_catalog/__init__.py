"""Declared data sets (catalog.yaml), their readers and the generators of the synthetic probe tasks."""

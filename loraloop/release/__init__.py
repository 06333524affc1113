"""Releases: choosing a round, the registry of versions, model cards and routing."""

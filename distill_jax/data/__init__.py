"""Prompt sources and (later) the curated-trace dataset and input pipeline."""

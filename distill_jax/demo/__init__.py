"""The embedded default task and demo run."""

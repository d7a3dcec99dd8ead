"""absl entry points; each parses flags, builds objects and calls the library."""

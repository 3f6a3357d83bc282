"""infonce op (placeholder being written now)."""

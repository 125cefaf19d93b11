"""Small shared helpers: atomic file writes and logging."""

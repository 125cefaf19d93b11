"""Small shared helpers: atomic file writes, logging and a process pool with a progress bar."""

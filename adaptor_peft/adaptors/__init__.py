"""adaptors."""

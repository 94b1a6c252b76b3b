"""storenode."""

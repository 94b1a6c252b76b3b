"""sentinel."""

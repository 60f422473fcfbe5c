"""alignlab."""

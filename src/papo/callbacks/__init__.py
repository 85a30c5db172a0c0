"""papo.callbacks."""

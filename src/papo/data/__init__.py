"""papo.data."""

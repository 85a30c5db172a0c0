"""papo.utils."""

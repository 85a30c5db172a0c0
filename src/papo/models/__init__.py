"""papo.models."""

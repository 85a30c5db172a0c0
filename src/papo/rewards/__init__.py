"""papo.rewards."""

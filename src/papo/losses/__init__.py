"""papo.losses."""

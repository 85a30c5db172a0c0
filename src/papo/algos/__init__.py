"""papo.algos."""

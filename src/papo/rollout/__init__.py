"""papo.rollout."""

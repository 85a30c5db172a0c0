"""A reward file whose import fails (tests/test_rewards_custom.py: the error names the file and the cause)."""

raise ImportError("this reward file needs a package that is not installed")

"""papo: Perception-Aware Policy Optimization (PAPO) for vision-language RLVR, on Lightning + Hydra."""

__version__ = "0.1.0"

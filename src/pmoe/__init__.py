"""pmoe: patch-level routed mixture of experts and provable expert pruning, in PyTorch."""
__version__ = "0.1.0"

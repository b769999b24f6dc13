"""wam-bench: benchmark and ablation harness for World Action Models."""
__version__ = "0.1.0"

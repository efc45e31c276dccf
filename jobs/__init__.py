"""Thin entry points: ``python -m jobs.<stage> --config configs/<stage>.yaml [--key value]``."""

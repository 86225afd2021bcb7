"""The benchmark and the soak, run as ``python -m bench.bench`` and ``python -m bench.soak``."""

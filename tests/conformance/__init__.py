"""WRI conformance suite: the same cases against every workload runtime (see conftest.py)."""

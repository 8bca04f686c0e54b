"""Workload Runtime Interface: the contract (``api``) and the runtimes that implement it."""

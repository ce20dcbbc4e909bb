"""Repository and lifecycle runs outside Temporal's adapters: contracts, identity, starting, and the run's work.

This package module imports nothing on purpose: workflows import its contracts through the sandbox.
"""

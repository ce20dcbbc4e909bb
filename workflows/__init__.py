"""Workflows; ``workflows.registry.WORKFLOWS`` is what the worker registers.

This package module imports nothing on purpose: the sandbox imports a workflow's package afresh for every new
workflow instance, so eager imports here would make each instance pay for every workflow module.
"""

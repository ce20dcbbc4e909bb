"""Operators' console: search attributes, current details, the Temporal Web UI, `qp temporal setup`, live CLI."""

"""Two worker processes and two API processes on one Temporal server."""

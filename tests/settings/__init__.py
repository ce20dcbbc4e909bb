"""Settings and the Temporal connection they describe."""

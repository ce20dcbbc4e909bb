"""Replay of recorded run histories: guards the workflows against non-deterministic changes."""

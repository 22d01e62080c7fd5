"""Unit tests: pure functions, no torch, no cluster, no network; the suite runs in seconds."""

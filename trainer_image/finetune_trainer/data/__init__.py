"""Data: reading rows, turning them into examples by format, tokenizing with masks."""

"""Hostile, careless and degenerate input, by category (issue 15): each file is one category."""

"""Whole experiments: the run config, ekt run, the method matrix, expert iteration, Ray fan-out."""

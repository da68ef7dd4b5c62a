"""Folds of the event log, and the daemon that feeds them."""

"""Companion duties for the legacy app: its logs, its stats as metrics (see DESIGN.md)."""

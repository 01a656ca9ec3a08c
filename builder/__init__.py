"""Diff engine and package builder: baseline + fix in, PatchPlan out (pure, no I/O beyond reading files)."""

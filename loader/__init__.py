"""The loader: verify, apply, status and revert against a running process or a file."""

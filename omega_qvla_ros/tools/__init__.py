"""The `omega-qvla` command line."""

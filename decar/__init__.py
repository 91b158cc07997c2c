"""The `decar` command line (decar/cli.py)."""

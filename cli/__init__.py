"""The `sentinels` command: argparse and the HTTP API through the standard library."""

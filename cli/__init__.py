"""The `sentinels` command (Typer). Heavy libraries are imported inside commands only."""

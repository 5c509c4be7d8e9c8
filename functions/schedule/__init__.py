"""schedule: starts queued jobs when there is room, highest priority first."""

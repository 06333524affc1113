"""The `loraloop` commands that are not DVC stages (the stages are in stages/)."""

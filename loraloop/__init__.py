"""loraloop: conversation logs to LoRA adapters, one reproducible DVC round at a time.

Wings: data (sources to dataset versions), lm (the model: loading, templates, generation,
losses), train (the training loop), judge (rules, scores, evaluation), release (the registry
and routing), serve (the API and production); commands/ holds the commands that are not DVC
stages (those are in stages/)."""

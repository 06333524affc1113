"""loraloop: one module per DVC stage, and the small shared pieces they need."""

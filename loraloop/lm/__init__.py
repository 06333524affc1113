"""The model: loading, the chat template, generation, losses, LoRA and vLLM."""

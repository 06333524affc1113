"""Training a round's adapter (loop.run): setup (data, model, reference, checkpoint), one SFT step
and one DPO step, the loop, and the finish that writes the adapter with ROUND.json."""

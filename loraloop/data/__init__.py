"""Data: raw sources to records, scrubbed, versioned and split per character."""

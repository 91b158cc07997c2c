"""Units of work: read from storage, compute with model, write to storage."""

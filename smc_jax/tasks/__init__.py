"""Task families: data, batches, loss, decoding and metrics per task (imports models, never train)."""

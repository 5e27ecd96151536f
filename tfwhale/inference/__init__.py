"""Stage 3 (predict): gallery embeddings, out-of-fold tuning, submission and report files."""

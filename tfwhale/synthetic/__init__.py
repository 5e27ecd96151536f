"""Stage 0 for demos and tests: synthetic photo-ID data sets in the Kaggle Happywhale layout."""

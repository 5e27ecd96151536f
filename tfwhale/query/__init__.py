"""The one query path: gallery -> crop -> embed (fold models, TTA) -> rank -> threshold policy -> answers."""

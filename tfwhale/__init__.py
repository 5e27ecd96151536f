"""tfwhale: photo-identification of individual whales and dolphins (build -> train -> predict)."""

__version__ = "0.1.0"

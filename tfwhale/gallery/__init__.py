"""The day-one gallery: a photo folder -> a gallery identify and the catalogue app use, no training."""

"""The answer label every stage shares: the one that means "not in the catalogue"."""

NEW_INDIVIDUAL = "new_individual"

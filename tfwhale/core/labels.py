"""What every stage means by "new": the answer label for an animal not in the catalogue, and its share."""

NEW_INDIVIDUAL = "new_individual"


def check_new_share(value: float, name: str = "new_share") -> float:
    """The expected share of new individuals among queries: in [0, 1) (1 would mean no known animal at all);
    ValueError naming the setting otherwise. The one check for the config, predict's flag and the tuning."""
    if not 0.0 <= value < 1.0:  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)

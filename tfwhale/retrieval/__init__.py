"""Search and scoring shared by training validation, predict and identify: kNN, top-k, ranking, threshold."""

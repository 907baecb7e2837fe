"""nightscore: nightly credit scoring and suitable product recommendation on Ray."""

"""Smart parking: occupancy state per space (debounced), per lot, and its API."""

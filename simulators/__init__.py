"""Device-fleet simulators: produce real wire formats for demos, load tests and replays."""

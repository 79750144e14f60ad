"""Camera, object and body pose from sparse views or trackers; the `pose` CLI."""

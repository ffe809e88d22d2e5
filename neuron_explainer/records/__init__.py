"""On-disk data layer: Arrow schemas, the run directory, and readers."""

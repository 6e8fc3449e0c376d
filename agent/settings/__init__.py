"""Device settings: a validated model, an atomic store with change notification, and the API."""

"""HTTP plumbing shared by every capability's handlers."""

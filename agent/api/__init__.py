"""The management plane's own endpoints: claim, login, users, settings, status, OpenAPI."""

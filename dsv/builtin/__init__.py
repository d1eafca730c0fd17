"""Built-in hook implementations, registered exactly like third-party plugins."""

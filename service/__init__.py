"""mae-hub service."""

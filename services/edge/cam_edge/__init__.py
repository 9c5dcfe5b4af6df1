"""Edge: the node clients talk to (REST + WebSocket on port 8080)."""

"""Chat service: rooms, membership and messages, served over the bus."""

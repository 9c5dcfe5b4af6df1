"""Presence service: live sessions per node, user statuses, node liveness."""

"""Health service: the cluster view (every node and replica, heartbeat age, load)."""

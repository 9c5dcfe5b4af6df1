"""The files service: attachment metadata, quotas and the orphan sweep."""

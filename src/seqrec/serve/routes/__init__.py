"""One router per resource: events, users, recommendations, items, and operations."""

"""HTTP endpoints, one router per resource."""

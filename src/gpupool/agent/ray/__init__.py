"""A Ray node per lease member, started inside the member's sandbox."""

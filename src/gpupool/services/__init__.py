"""Use cases: domain rules combined with storage and the outside world through the small
interfaces in `ports`. The coordinator's HTTP layer calls these; so do its background ticks.
"""

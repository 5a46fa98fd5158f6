"""BIDS input queries (:mod:`.query`) and derivative naming/writing (:mod:`.derivatives`)."""

"""Nipype graph factories of the participant level (:mod:`.participant`) and their execution
(:mod:`.execution`). The group level is plain Python: :mod:`ievnet_bids.group`."""

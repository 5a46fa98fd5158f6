"""Thin Nipype interfaces over the pure modules (heavy imports inside ``_run_interface``)."""

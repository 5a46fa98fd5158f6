"""Nipype workflows (participant level) and the plain-Python group level."""

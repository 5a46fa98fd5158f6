"""Ear localisation: template registration (first guess) and labyrinth search (refinement)."""

"""Small helpers shared by the core (logging)."""

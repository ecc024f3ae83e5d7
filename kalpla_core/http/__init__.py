"""HTTP conventions shared by core and plugin routes."""

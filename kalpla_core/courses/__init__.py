"""Courses: catalog, structure (modules and lessons) and lesson kinds."""

"""Enrollment, waitlists, access control and progress."""

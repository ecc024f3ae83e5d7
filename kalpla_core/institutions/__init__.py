"""Institutions (tenants) and their plugin enablement."""

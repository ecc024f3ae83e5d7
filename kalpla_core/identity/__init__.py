"""Accounts, memberships, roles, permissions and tokens."""

"""Identities from outside: OpenID Connect social login and Cognito-issued tokens."""

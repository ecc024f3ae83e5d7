"""The mail port: templates rendered once, delivered by the configured provider."""

"""Payment gateways on the ``payments`` port (see :mod:`kalpla_payments.providers.base`)."""

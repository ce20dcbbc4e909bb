"""Event delivery: signed webhooks and the AMQP sink.

- :mod:`~quantapilot.webhooks.contracts`: names and inputs of the delivery and publication workflows and
  activities (the only module of this package the workflows import, with the pure retry ``schedule``).
- :mod:`~quantapilot.webhooks.delivery`: the delivery state machine, what an attempt's outcome does to the
  delivery and its endpoint (retries, disabling, rotation overlap, redelivery).
- :mod:`~quantapilot.webhooks.tables` and its queries: ``endpoints``, ``signing_secrets``, ``deliveries``.
- :mod:`~quantapilot.webhooks.recovery`: re-sending the deliveries of a window that did not arrive (``recover``).
- ``fanout`` (an event's deliveries) and ``starts`` (starting their workflows); ``sender`` (one signed POST),
  ``envelopes``, ``signing``, ``urlsafety``; ``views`` (the public JSON forms); ``amqp``, ``listen``,
  ``at_rest``.

Submodules are imported on demand so that a consumer who only needs :func:`verify_signature` does not pull in
the database or broker clients.
"""

from quantapilot.webhooks.signing import SIGNATURE_HEADER, new_secret, sign, verify_signature

__all__ = ["SIGNATURE_HEADER", "new_secret", "sign", "verify_signature"]

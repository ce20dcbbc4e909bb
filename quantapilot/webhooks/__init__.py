"""Event delivery: signed webhooks (signing, URL safety, sender, retry schedule, store) and the AMQP sink.

Submodules are imported on demand so that a consumer who only needs :func:`verify_signature` does not pull in
the database or broker clients.
"""

from quantapilot.webhooks.signing import SIGNATURE_HEADER, new_secret, sign, verify_signature

__all__ = ["SIGNATURE_HEADER", "new_secret", "sign", "verify_signature"]

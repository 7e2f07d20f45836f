"""Webhooks in (SPEC 10): source checks (`sources`), the receiving path (`receive`), `process-inbox` (`jobs`)."""

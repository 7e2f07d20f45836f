"""Warehouse integration (SPEC 11): the API client (`client`), reconciliation (`reconcile`), the machine API (`api`)."""

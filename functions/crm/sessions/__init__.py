"""Class sessions (SPEC 12): the rules are in Postgres; `jobs` holds the `mark-no-shows` job."""

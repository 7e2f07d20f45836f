"""Image cache (SPEC §7.4): safe download, Pillow re-encode, first-party storage, the jobs."""

"""clipsift's orchestrating side: config, session, I/O and the jobs (``clipsift.jobs``)."""

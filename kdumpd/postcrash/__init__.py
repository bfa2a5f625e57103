"""The next boot: finding dumps saved since the last run, their reports, and retention."""

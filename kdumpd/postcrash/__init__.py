"""Next boot: what the saved dumps are (listing, crash report) and their kernel logs."""

"""results.json, results.md and report.html from the records on disk."""

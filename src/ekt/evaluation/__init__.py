"""The evaluate stage, pass@k and majority-vote metrics, bootstrap statistics."""

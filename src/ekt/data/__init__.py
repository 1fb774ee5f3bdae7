"""Tasks, grading and prompt formats: what a problem is and how an answer is judged."""

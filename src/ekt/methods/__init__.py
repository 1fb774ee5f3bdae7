"""Training methods that learn from more than fixed pairs: GRPO (``grpo``: the sandbox as
the reward) and on-policy distillation (``onpolicy``: a teacher scores the student's own
samples). Each exposes one plain function taking a settings object."""

"""The verify stage (run programs, grade them) and the filter stage (train pairs)."""

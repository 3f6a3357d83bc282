"""critic_grad op (placeholder being written now)."""

"""Meta-learners: each turns a batch of episodes into a loss and per-task metrics."""

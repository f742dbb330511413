"""Fine-tuning: data, encoder cache, checkpoints, the loop and the `train` recipe."""

"""digits: MNIST as a reproducible DVC pipeline of PyTorch stages, tracked in MLflow."""

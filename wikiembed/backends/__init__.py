"""The embedding backends: the interface they share (`base`), the factory (`factory`), and each backend."""

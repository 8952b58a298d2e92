"""What runs on GPUs: the PyTorch engine, the TEI client, and the Modal apps that host them."""
